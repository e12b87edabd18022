
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
  checked and entries read with one call per stream for the whole batch (prelude); the
  schedule, the releases and the counters are written once per call, whatever the number
  of failures.
]]
local function dead_letter(dlq, policy, seq, attempt, err, reason, envelope)
  local cmd = { 'XADD', dlq }
  if policy.dlq_max > 0 then
    cmd[3], cmd[4], cmd[5] = 'MAXLEN', '~', int(policy.dlq_max)
  end
  for _, v in ipairs({ '*', 'seq', seq, 'attempts', int(attempt), 'err', err, 'ts', int(policy.now),
                       'reason', reason, 'e', envelope }) do
    cmd[#cmd + 1] = v
  end
  redis.call(unpack(cmd))
end

-- `list` holds the failures from index `first` on, 6 values each (sh_group_fail_v2's
-- ARGV[9…]); they are read in place, without a table per failure.
local function group_fail_batch(keys, group, policy, list, first)
  local stream, retry, schedule, dlq, meta = keys[1], keys[2], keys[3], keys[5], keys[6]
  -- The batch's leases are read with one call per stream, and its entries of the topic's
  -- stream with one more (prelude, `pending_counts` and `span_entries`), then each
  -- failure is settled from them.
  local ids_main, ids_retry = {}, {}
  for i = first, #list, 6 do
    local ids = list[i] == 'r' and ids_retry or ids_main
    ids[#ids + 1] = list[i + 1]
  end
  local pending_main, pending_retry = pending_counts(stream, group, ids_main), pending_counts(retry, group, ids_retry)
  local entries_main, entries_retry = span_entries(stream, ids_main), {}
  local out, n, scheduled = {}, 0, {}
  local released_main, released_retry = {}, {}
  local dead, expired, retried, deleted = 0, 0, 0, 0
  for i = first, #list, 6 do
    local from_retry = list[i] == 'r'
    local id, count, outcome, err = list[i + 1], tonumber(list[i + 2]), list[i + 3], list[i + 5]
    local pending = from_retry and pending_retry or pending_main
    local status = lease_status(pending, id, count)
    local result
    if status ~= 'ok' then
      result = { status, 0, 0 }
    else
      pending[id] = false -- the same delivery twice in one call: failed once
      local released = from_retry and released_retry or released_main
      released[#released + 1] = id
      -- Read alone when the span did not hold it: only deliveries that hold their lease.
      local fields = entry_of(from_retry and entries_retry or entries_main, from_retry and retry or stream, id)
      if not fields then
        deleted = deleted + 1
        result = { 'deleted', count, 0 }
      else
        -- The entry's fields, scanned in place: "e" (the envelope), and on a retry
        -- entry "seq" and "a" (the attempts before this one).
        local envelope, seq, before = '', nil, nil
        for j = 1, #fields, 2 do
          local name = fields[j]
          if name == 'e' then
            envelope = fields[j + 1]
          elseif name == 'seq' then
            seq = fields[j + 1]
          elseif name == 'a' then
            before = fields[j + 1]
          end
        end
        local attempt = count
        if from_retry then attempt = tonumber(before or '1') + count - 1 end
        -- A main-stream entry's seq is its id's; a retry entry without one (never written
        -- so) falls back to its id, as before, rather than failing the whole call.
        if not from_retry or not seq then seq = string.match(id, '^(%d+)') end
        if outcome == 'expired-dlq' or outcome == 'expired-drop' then
          if outcome == 'expired-dlq' then dead_letter(dlq, policy, seq, attempt, err, 'expired', envelope) end
          expired = expired + 1
          result = { 'expired', attempt, 0 }
        elseif outcome == 'permanent' or attempt >= policy.max_attempts then
          dead_letter(dlq, policy, seq, attempt, err, 'failed', envelope)
          dead = dead + 1
          result = { 'dead', attempt, 0 }
        else
          local delay = tonumber(list[i + 4])
          if delay < 0 then
            delay = math.min(policy.max_delay, policy.base * policy.multiplier ^ (attempt - 1))
            delay = math.floor(delay - delay * policy.jitter * math.random())
          end
          local due = policy.now + delay
          -- The retry is its member: no second key to write now and read back at promotion.
          scheduled[#scheduled + 1] = int(due)
          scheduled[#scheduled + 1] = seq .. ':' .. int(attempt + 1) .. ':' .. int(#err) .. ':' .. err .. envelope
          retried = retried + 1
          result = { 'scheduled', attempt, due }
        end
      end
    end
    n = n + 1
    out[n] = result
  end
  call_chunked({ 'ZADD', schedule }, scheduled) -- score and member pairs
  call_chunked({ 'XACK', stream, group }, released_main)
  release_retry(retry, group, released_retry)
  if retried > 0 then redis.call('HINCRBY', meta, 'retried', int(retried)) end
  if dead > 0 then redis.call('HINCRBY', meta, 'dead', int(dead)) end
  if expired > 0 then redis.call('HINCRBY', meta, 'expired', int(expired)) end
  if deleted > 0 then redis.call('HINCRBY', meta, 'deleted', int(deleted)) end
  return out
end

local function group_fail_v2(keys, args)
  local policy = {
    max_attempts = tonumber(args[2]),
    base = tonumber(args[3]), max_delay = tonumber(args[4]),
    multiplier = tonumber(args[5]), jitter = tonumber(args[6]),
    now = tonumber(args[7]), dlq_max = tonumber(args[8]),
  }
  return group_fail_batch(keys, args[1], policy, args, 9)
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
  local failure = { args[2], args[3], args[4], args[6], args[7], args[12] }
  return group_fail_batch(keys, args[1], policy, failure, 1)[1]
end

redis.register_function('sh_group_fail_v1', group_fail_v1)
