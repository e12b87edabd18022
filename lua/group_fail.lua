
--[[ sh_group_fail_v1 — a delivery failed (or expired): schedule its retry or dead-letter it.
  KEYS[1]  stream          <prefix>:{T}:s
  KEYS[2]  retry stream    <prefix>:{T}:g:<G>:r
  KEYS[3]  retry schedule  <prefix>:{T}:g:<G>:z (zset: "<seq>:<attempt>" scored by due ms)
  KEYS[4]  retry payloads  <prefix>:{T}:g:<G>:p (hash: "<member>|e" envelope, "<member>|err")
  KEYS[5]  dead letters    <prefix>:{T}:g:<G>:d (stream)
  KEYS[6]  group meta      <prefix>:{T}:g:<G>:m (counters)
  ARGV[1]  group name
  ARGV[2]  source ("m" | "r"), ARGV[3] entry id, ARGV[4] delivery count (the lease)
  ARGV[5]  max_attempts
  ARGV[6]  outcome: "retry" | "permanent" (dead-letter now) | "expired-drop" | "expired-dlq"
  ARGV[7]  delay of the next attempt in ms, or -1 for the group's backoff:
           min(max, base * multiplier^(attempt-1)), minus up to jitter of it at random
  ARGV[8…11] backoff base ms, max ms, multiplier, jitter (0 to 1)
  ARGV[12] error text, ARGV[13] now ms
  ARGV[14] dead-letter stream max length (approximate; 0 = unbounded)
  Returns  { status, attempt (the delivery that failed, 1 = first), due ms (0 unless
           scheduled) }; status is "scheduled" | "dead" | "expired" | "deleted" (the entry
           is gone from its stream: acked and counted) | "lease_expired" | "unknown".
  The attempt is the entry's delivery count, plus the attempts before it for an entry of
  the retry stream (its field "a"), so it survives crashes and redeliveries.
  Atomicity: the entry leaves the group's pending list in the same call that records what
  comes next (schedule or dead letter), so a crash at any instant loses nothing.
]]
local function group_fail(keys, args)
  local stream, retry, schedule, payloads, dlq, meta = keys[1], keys[2], keys[3], keys[4], keys[5], keys[6]
  local group, from_retry = args[1], args[2] == 'r'
  local src = from_retry and retry or stream
  local id, count, max_attempts = args[3], tonumber(args[4]), tonumber(args[5])
  local outcome, delay = args[6], tonumber(args[7])
  local base, max_delay, multiplier, jitter = tonumber(args[8]), tonumber(args[9]), tonumber(args[10]), tonumber(args[11])
  local err, now, dlq_max = args[12], tonumber(args[13]), tonumber(args[14])
  local status = pending_status(src, group, id, count)
  if status ~= 'ok' then return { status, 0, 0 } end

  local entry = redis.call('XRANGE', src, id, id)
  local function release()
    redis.call('XACK', src, group, id)
    if from_retry then redis.call('XDEL', src, id) end
  end
  if #entry == 0 then
    release()
    redis.call('HINCRBY', meta, 'deleted', 1)
    return { 'deleted', count, 0 }
  end
  local f = fields_of(entry[1][2])
  local attempt = count
  if from_retry then attempt = tonumber(f['a'] or '1') + count - 1 end
  local seq = from_retry and f['seq'] or string.match(id, '^(%d+)')
  local envelope = f['e'] or ''

  local function dead_letter(reason)
    local cmd = { 'XADD', dlq }
    if dlq_max > 0 then
      table.insert(cmd, 'MAXLEN'); table.insert(cmd, '~'); table.insert(cmd, dlq_max)
    end
    for _, v in ipairs({ '*', 'seq', seq, 'attempts', attempt, 'err', err, 'ts', now, 'reason', reason, 'e', envelope }) do
      table.insert(cmd, v)
    end
    redis.call(unpack(cmd))
  end

  if outcome == 'expired-dlq' or outcome == 'expired-drop' then
    if outcome == 'expired-dlq' then dead_letter('expired') end
    release()
    redis.call('HINCRBY', meta, 'expired', 1)
    return { 'expired', attempt, 0 }
  end
  if outcome == 'permanent' or attempt >= max_attempts then
    dead_letter('failed')
    release()
    redis.call('HINCRBY', meta, 'dead', 1)
    return { 'dead', attempt, 0 }
  end
  if delay < 0 then
    delay = math.min(max_delay, base * multiplier ^ (attempt - 1))
    delay = math.floor(delay - delay * jitter * math.random())
  end
  local due = now + delay
  local member = seq .. ':' .. (attempt + 1)
  redis.call('ZADD', schedule, due, member)
  redis.call('HSET', payloads, member .. '|e', envelope, member .. '|err', err)
  release()
  redis.call('HINCRBY', meta, 'retried', 1)
  return { 'scheduled', attempt, due }
end

redis.register_function('sh_group_fail_v1', group_fail)
