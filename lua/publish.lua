
--[[ sh_publish_v2 — publish envelopes built by streamhub (single or batch), atomically.
  KEYS[1]  meta hash      <prefix>:{T}:m
  KEYS[2]  stream         <prefix>:{T}:s
  KEYS[3]  hint channel   <prefix>:{T}:h
  KEYS[4…] idempotency keys <prefix>:{T}:i:<key>, one per message that carries one
  ARGV[1]  retention max_len (0 = unbounded)
  ARGV[2]  idempotency window in ms
  ARGV[3]  n, the number of messages
  ARGV[4]  retention hard cap with consumer groups (0 = none)
  ARGV[5]  retention max_age in ms (0 = none)
  ARGV[6…] per message, 3 values: envelope (MessagePack), message id,
           index into KEYS of its idempotency key (0 = none)
  Returns  flat array, 4 values per message in order: epoch, seq, duplicate (0|1), id;
           then one more value: how many entries retention by age removed in this call.
  Errors   none of its own; a Redis error leaves nothing written (all checks come first).
  Atomicity: all messages get consecutive seqs in one call; one hint carries the last seq.

  sh_publish_v1 is the same without ARGV[5] (no age limit) and without the last value
  (per message from ARGV[5]); it stays registered for callers of the first release.
]]
local function publish_messages(keys, args, max_age, first)
  local meta, stream, channel = keys[1], keys[2], keys[3]
  local max_len = tonumber(args[1])
  local window = tonumber(args[2])
  local n = tonumber(args[3])
  local hard_max = tonumber(args[4])
  local epoch, seq, created = load_meta(meta, stream)
  local base = seq
  local out = {}
  local appended = false
  local aged = 0
  for i = 0, n - 1 do
    local envelope, id, idem = args[first + i * 3], args[first + 1 + i * 3], tonumber(args[first + 2 + i * 3])
    local dup_epoch, dup_seq, dup_id
    if idem > 0 then
      dup_epoch, dup_seq, dup_id = idem_lookup(keys[idem])
    end
    if dup_epoch then
      table.insert(out, dup_epoch); table.insert(out, dup_seq)
      table.insert(out, 1); table.insert(out, dup_id)
    else
      seq = seq + 1
      aged = aged + append(stream, meta, seq, envelope, max_len, hard_max, max_age)
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
  return out, aged
end

local function publish_v1(keys, args)
  local out = publish_messages(keys, args, 0, 5)
  return out
end

local function publish_v2(keys, args)
  local out, aged = publish_messages(keys, args, tonumber(args[5]), 6)
  table.insert(out, aged)
  return out
end

redis.register_function('sh_publish_v1', publish_v1)
redis.register_function('sh_publish_v2', publish_v2)
