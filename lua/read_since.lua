
--[[ sh_read_since_v1 — one consistent snapshot of a topic's history after a seq.
  KEYS[1]  meta hash   <prefix>:{T}:m
  KEYS[2]  stream      <prefix>:{T}:s
  ARGV[1]  since: return entries with seq > since
  ARGV[2]  limit: at most this many entries
  Returns  { epoch ('' when the topic has no meta), top seq, first retained seq
             (0 when the stream is empty), base (seq before the epoch's first),
             seq1, envelope1, seq2, envelope2, … }
  Read-only (no-writes): may run on replicas with FCALL_RO.
]]
local function read_since(keys, args)
  local meta, stream = keys[1], keys[2]
  local since, limit = args[1], tonumber(args[2])
  local m = redis.call('HMGET', meta, 'epoch', 'seq', 'base')
  local out = { m[1] or '', tonumber(m[2] or '0'), 0, tonumber(m[3] or '0') }
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #first == 0 then return out end
  out[3] = tonumber(string.match(first[1][1], '^(%d+)'))
  if limit <= 0 then return out end
  local entries = redis.call('XRANGE', stream, '(' .. since .. '-0', '+', 'COUNT', limit)
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    local envelope = ''
    for i = 1, #fields, 2 do
      if fields[i] == 'e' then envelope = fields[i + 1] end
    end
    table.insert(out, tonumber(string.match(entry[1], '^(%d+)')))
    table.insert(out, envelope)
  end
  return out
end

redis.register_function { function_name = 'sh_read_since_v1', callback = read_since, flags = { 'no-writes' } }
