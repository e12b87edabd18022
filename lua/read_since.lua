
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
local function read_since_from(keys, args, with_prev)
  local meta, stream = keys[1], keys[2]
  local since, limit = args[1], tonumber(args[2])
  local m = redis.call('HMGET', meta, 'epoch', 'seq', 'base', 'prev')
  local out = { m[1] or '', tonumber(m[2] or '0'), 0, tonumber(m[3] or '0') }
  if with_prev then table.insert(out, m[4] or '') end
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

local function read_since(keys, args)
  return read_since_from(keys, args, false)
end

redis.register_function { function_name = 'sh_read_since_v1', callback = read_since, flags = { 'no-writes' } }

--[[ sh_read_since_v2 — sh_read_since_v1 with the epoch the current one follows.
  KEYS, ARGV  as sh_read_since_v1
  Returns  { epoch, top seq, first retained seq, base, prev, seq1, envelope1, … }: prev is
           the epoch this one continues ('' when none): its seqs up to base are the same
           messages in both (a new epoch after another primary wrote the topic, see
           load_meta in lua/prelude.lua). Only committed messages are ever in the stream
           (staged ones wait in <prefix>:{T}:x, lua/publish.lua).
  Read-only (no-writes).
]]
local function read_since_v2(keys, args)
  return read_since_from(keys, args, true)
end

redis.register_function { function_name = 'sh_read_since_v2', callback = read_since_v2, flags = { 'no-writes' } }

--[[ sh_tail_read_v1 — what a tail reads of a topic with presence: its messages and its
  join/leave events, in one snapshot.
  KEYS[1]  meta hash      <prefix>:{T}:m
  KEYS[2]  stream         <prefix>:{T}:s
  KEYS[3]  events         <prefix>:{T}:pe (lua/presence.lua)
  ARGV[1]  since: entries with seq > since
  ARGV[2]  limit: at most this many entries
  ARGV[3]  events after this event id; "" for none, only the id of the newest event
  Returns  { epoch, top, first retained, base (as sh_read_since_v1), last event id ('' when
           none), n, then n events of 4 values (epoch, after, kind, entry), then seq1,
           envelope1, … }. The events are those after ARGV[3] whose place (after) is
           within the messages this page reaches (at most `since` + the page), or that
           belong to another epoch; the last event id is that of the last one returned.
  Read-only (no-writes).
]]
local function tail_read_from(keys, args, with_prev)
  local head = 4
  if with_prev then head = 5 end
  local base = read_since_from({ keys[1], keys[2] }, { args[1], args[2] }, with_prev)
  local reach = tonumber(args[1])
  if #base > head then reach = base[#base - 1] end
  local epoch = base[1]
  local out = {}
  for i = 1, head do out[i] = base[i] end
  local events, last_id = {}, ''
  if args[3] == '' then
    local newest = redis.call('XREVRANGE', keys[3], '+', '-', 'COUNT', 1)
    if #newest > 0 then last_id = newest[1][1] end
  else
    last_id = args[3]
    for _, e in ipairs(redis.call('XRANGE', keys[3], '(' .. args[3], '+', 'COUNT', 1000)) do
      local f = fields_of(e[2])
      local after = tonumber(f['after'] or '0')
      if f['epoch'] == epoch and after > reach then break end
      table.insert(events, f['epoch'] or ''); table.insert(events, after)
      table.insert(events, f['kind'] or ''); table.insert(events, f['entry'] or '{}')
      last_id = e[1]
    end
  end
  table.insert(out, last_id)
  table.insert(out, #events / 4)
  for _, v in ipairs(events) do table.insert(out, v) end
  for i = head + 1, #base do table.insert(out, base[i]) end
  return out
end

local function tail_read(keys, args)
  return tail_read_from(keys, args, false)
end

redis.register_function { function_name = 'sh_tail_read_v1', callback = tail_read, flags = { 'no-writes' } }

--[[ sh_tail_read_v2 — sh_tail_read_v1 with prev after base (as sh_read_since_v2).
  KEYS, ARGV  as sh_tail_read_v1
  Returns  { epoch, top, first retained, base, prev, last event id, n, events…, seq1,
           envelope1, … }
  Read-only (no-writes).
]]
local function tail_read_v2(keys, args)
  return tail_read_from(keys, args, true)
end

redis.register_function { function_name = 'sh_tail_read_v2', callback = tail_read_v2, flags = { 'no-writes' } }
