
--[[ sh_group_fail_v2 — deliveries failed (or expired): schedule each one's retry or
  dead-letter it. One call for a worker's whole batch of failures.
  KEYS[1]  stream          <prefix>:{T}:s
  KEYS[2]  retry stream    <prefix>:{T}:g:<G>:r
  KEYS[3]  retry schedule  <prefix>:{T}:g:<G>:z (zset scored by due ms; a member is the whole
           retry: "<seq>:<attempt>:<error length>:<error><envelope>")
  KEYS[4]  retry payloads  <prefix>:{T}:g:<G>:p (hash of retries scheduled by earlier versions:
           "<seq>:<attempt>|e" envelope, "…|err"; read by sh_group_promote_v2, no longer written)
  KEYS[5]  dead letters    <prefix>:{T}:g:<G>:d (stream)
  KEYS[6]  group meta      <prefix>:{T}:g:<G>:m (counters)
  ARGV[1]  group name
  ARGV[2]  max_attempts
  ARGV[3…6] backoff base ms, max ms, multiplier, jitter (0 to 1): the delay of attempt n is
           min(max, base * multiplier^(n-1)), minus up to jitter of it at random
  ARGV[7]  now ms
  ARGV[8]  dead-letter stream max length (approximate; 0 = unbounded)
  ARGV[9…] per failure, 6 values: source ("m" | "r"), entry id, delivery count (the lease),
           outcome ("retry" | "permanent" (dead-letter now) | "expired-drop" |
           "expired-dlq"), delay of the next attempt in ms (-1: the backoff above), error text
  Returns  per failure, in order, { status, attempt (the delivery that failed, 1 = first),
           due ms (0 unless scheduled) }; status is "scheduled" | "dead" | "expired" |
           "deleted" (the entry is gone from its stream: acked and counted) |
           "lease_expired" | "unknown" (also a second failure of the same delivery in one call).
  The attempt is the entry's delivery count, plus the attempts before it for an entry of
  the retry stream (its field "a"), so it survives crashes and redeliveries.
  Atomicity: each entry leaves the group's pending list in the same call that records what
  comes next (schedule or dead letter), so a crash at any instant loses nothing. Leases are
  checked and entries read one by one; the schedule, the releases and the counters are
  written once per call, whatever the number of failures.
]]
local function group_fail_batch(keys, group, policy, failures)
  local stream, retry, schedule, dlq, meta = keys[1], keys[2], keys[3], keys[5], keys[6]
  local out, seen, scheduled = {}, {}, {}
  local released = { [stream] = {}, [retry] = {} }
  local counts = {}
  local function count(name) counts[name] = (counts[name] or 0) + 1 end
  for _, f in ipairs(failures) do
    local from_retry = f.source == 'r'
    local src = from_retry and retry or stream
    local status
    if seen[src .. ' ' .. f.id] then
      status = 'unknown'
    else
      status = pending_status(src, group, f.id, f.count)
    end
    local result
    if status ~= 'ok' then
      result = { status, 0, 0 }
    else
      seen[src .. ' ' .. f.id] = true
      table.insert(released[src], f.id)
      local entry = redis.call('XRANGE', src, f.id, f.id)
      if #entry == 0 then
        count('deleted')
        result = { 'deleted', f.count, 0 }
      else
        local fields = fields_of(entry[1][2])
        local attempt = f.count
        if from_retry then attempt = tonumber(fields['a'] or '1') + f.count - 1 end
        local seq = from_retry and fields['seq'] or string.match(f.id, '^(%d+)')
        local envelope = fields['e'] or ''
        local function dead_letter(reason)
          local cmd = { 'XADD', dlq }
          if policy.dlq_max > 0 then
            table.insert(cmd, 'MAXLEN'); table.insert(cmd, '~'); table.insert(cmd, policy.dlq_max)
          end
          for _, v in ipairs({ '*', 'seq', seq, 'attempts', attempt, 'err', f.err, 'ts', policy.now,
                               'reason', reason, 'e', envelope }) do
            table.insert(cmd, v)
          end
          redis.call(unpack(cmd))
        end
        if f.outcome == 'expired-dlq' or f.outcome == 'expired-drop' then
          if f.outcome == 'expired-dlq' then dead_letter('expired') end
          count('expired')
          result = { 'expired', attempt, 0 }
        elseif f.outcome == 'permanent' or attempt >= policy.max_attempts then
          dead_letter('failed')
          count('dead')
          result = { 'dead', attempt, 0 }
        else
          local delay = f.delay
          if delay < 0 then
            delay = math.min(policy.max_delay, policy.base * policy.multiplier ^ (attempt - 1))
            delay = math.floor(delay - delay * policy.jitter * math.random())
          end
          local due = policy.now + delay
          -- The retry is its member: no second key to write now and read back at promotion.
          table.insert(scheduled, due)
          table.insert(scheduled, seq .. ':' .. (attempt + 1) .. ':' .. #f.err .. ':' .. f.err .. envelope)
          count('retried')
          result = { 'scheduled', attempt, due }
        end
      end
    end
    table.insert(out, result)
  end
  call_chunked({ 'ZADD', schedule }, scheduled) -- score and member pairs
  call_chunked({ 'XACK', stream, group }, released[stream])
  call_chunked({ 'XACK', retry, group }, released[retry])
  call_chunked({ 'XDEL', retry }, released[retry])
  for name, n in pairs(counts) do redis.call('HINCRBY', meta, name, n) end
  return out
end

local function group_fail_v2(keys, args)
  local policy = {
    max_attempts = tonumber(args[2]),
    base = tonumber(args[3]), max_delay = tonumber(args[4]),
    multiplier = tonumber(args[5]), jitter = tonumber(args[6]),
    now = tonumber(args[7]), dlq_max = tonumber(args[8]),
  }
  local failures = {}
  for i = 9, #args, 6 do
    table.insert(failures, {
      source = args[i], id = args[i + 1], count = tonumber(args[i + 2]),
      outcome = args[i + 3], delay = tonumber(args[i + 4]), err = args[i + 5],
    })
  end
  return group_fail_batch(keys, args[1], policy, failures)
end

redis.register_function('sh_group_fail_v2', group_fail_v2)

--[[ sh_group_fail_v1 — one failed (or expired) delivery; kept for callers of earlier
  releases (sh_group_fail_v2 does the same for many).
  KEYS     as sh_group_fail_v2
  ARGV[1]  group name
  ARGV[2]  source ("m" | "r"), ARGV[3] entry id, ARGV[4] delivery count (the lease)
  ARGV[5]  max_attempts
  ARGV[6]  outcome: "retry" | "permanent" | "expired-drop" | "expired-dlq"
  ARGV[7]  delay of the next attempt in ms, or -1 for the group's backoff
  ARGV[8…11] backoff base ms, max ms, multiplier, jitter (0 to 1)
  ARGV[12] error text, ARGV[13] now ms
  ARGV[14] dead-letter stream max length (approximate; 0 = unbounded)
  Returns  { status, attempt, due ms }, as one entry of sh_group_fail_v2's answer.
]]
local function group_fail_v1(keys, args)
  local policy = {
    max_attempts = tonumber(args[5]),
    base = tonumber(args[8]), max_delay = tonumber(args[9]),
    multiplier = tonumber(args[10]), jitter = tonumber(args[11]),
    now = tonumber(args[13]), dlq_max = tonumber(args[14]),
  }
  local failure = {
    source = args[2], id = args[3], count = tonumber(args[4]),
    outcome = args[6], delay = tonumber(args[7]), err = args[12],
  }
  return group_fail_batch(keys, args[1], policy, { failure })[1]
end

redis.register_function('sh_group_fail_v1', group_fail_v1)
