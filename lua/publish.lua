
--[[ sh_publish_v1 — publish envelopes built by streamhub (single or batch), atomically.
  KEYS[1]  meta hash      <prefix>:{T}:m
  KEYS[2]  stream         <prefix>:{T}:s
  KEYS[3]  hint channel   <prefix>:{T}:h
  KEYS[4…] idempotency keys <prefix>:{T}:i:<key>, one per message that carries one
  ARGV[1]  retention max_len (0 = unbounded)
  ARGV[2]  idempotency window in ms
  ARGV[3]  n, the number of messages
  ARGV[4]  retention hard cap with consumer groups (0 = none)
  ARGV[5…] per message, 3 values: envelope (MessagePack), message id,
           index into KEYS of its idempotency key (0 = none)
  Returns  flat array, 4 values per message in order: epoch, seq, duplicate (0|1), id
  Errors   none of its own; a Redis error leaves nothing written (all checks come first).
  Atomicity: all messages get consecutive seqs in one call; one hint carries the last seq.
]]
local function publish(keys, args)
  local meta, stream, channel = keys[1], keys[2], keys[3]
  local max_len = tonumber(args[1])
  local window = tonumber(args[2])
  local n = tonumber(args[3])
  local hard_max = tonumber(args[4])
  local epoch, seq, created = load_meta(meta, stream)
  local base = seq
  local out = {}
  local appended = false
  for i = 0, n - 1 do
    local envelope, id, idem = args[5 + i * 3], args[6 + i * 3], tonumber(args[7 + i * 3])
    local dup_epoch, dup_seq, dup_id
    if idem > 0 then
      dup_epoch, dup_seq, dup_id = idem_lookup(keys[idem])
    end
    if dup_epoch then
      table.insert(out, dup_epoch); table.insert(out, dup_seq)
      table.insert(out, 1); table.insert(out, dup_id)
    else
      seq = seq + 1
      append(stream, meta, seq, envelope, max_len, hard_max)
      appended = true
      if idem > 0 then
        redis.call('SET', keys[idem], epoch .. ' ' .. seq .. ' ' .. id, 'PX', window)
      end
      table.insert(out, epoch); table.insert(out, seq)
      table.insert(out, 0); table.insert(out, id)
    end
  end
  if appended then
    commit_meta(meta, epoch, seq, created, base)
    hint(channel, epoch, seq)
  end
  return out
end

redis.register_function('sh_publish_v1', publish)
