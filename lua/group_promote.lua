
--[[ sh_group_promote_v1 — move due retries onto the group's retry stream.
  KEYS[1]  retry schedule  <prefix>:{T}:g:<G>:z
  KEYS[2]  retry payloads  <prefix>:{T}:g:<G>:p
  KEYS[3]  retry stream    <prefix>:{T}:g:<G>:r
  ARGV[1]  now ms, ARGV[2] at most this many
  Returns  the number promoted, and the earliest due time still scheduled (0 when none).
  Cost O(due): only members with score <= now are touched, however many are scheduled.
]]
local function group_promote(keys, args)
  local schedule, payloads, retry = keys[1], keys[2], keys[3]
  local due = redis.call('ZRANGEBYSCORE', schedule, '-inf', args[1], 'LIMIT', 0, tonumber(args[2]))
  for _, member in ipairs(due) do
    local seq, attempt = string.match(member, '^(%d+):(%d+)$')
    local envelope = redis.call('HGET', payloads, member .. '|e') or ''
    local err = redis.call('HGET', payloads, member .. '|err') or ''
    redis.call('XADD', retry, '*', 'seq', seq, 'a', attempt, 'err', err, 'e', envelope)
    redis.call('ZREM', schedule, member)
    redis.call('HDEL', payloads, member .. '|e', member .. '|err')
  end
  local next_due = redis.call('ZRANGE', schedule, 0, 0, 'WITHSCORES')
  return { #due, tonumber(next_due[2] or '0') }
end

redis.register_function('sh_group_promote_v1', group_promote)
