
--[[ sh_group_promote_v2 — move due retries onto the group's retry stream.
  KEYS[1]  retry schedule  <prefix>:{T}:g:<G>:z
  KEYS[2]  retry payloads  <prefix>:{T}:g:<G>:p
  KEYS[3]  retry stream    <prefix>:{T}:g:<G>:r
  ARGV[1]  now ms, ARGV[2] at most this many
  Returns  the number promoted, and the earliest due time still scheduled (0 when none).
  Cost O(due): only members with score <= now are touched, however many are scheduled.
  A member carries the whole retry (sh_group_fail_v2); one scheduled by an earlier version
  ("<seq>:<attempt>") has its envelope and error in the payloads hash. The name changed
  with the member's form: a node calling it finds it missing while an earlier library is
  loaded, and loads its own (whose promote reads both forms). sh_group_promote_v1, kept
  for nodes of earlier releases, is the same function.
]]
local function group_promote(keys, args)
  local schedule, payloads, retry = keys[1], keys[2], keys[3]
  local due = redis.call('ZRANGEBYSCORE', schedule, '-inf', args[1], 'LIMIT', 0, tonumber(args[2]))
  for _, member in ipairs(due) do
    local seq, attempt, err_len, at = string.match(member, '^(%d+):(%d+):(%d+):()')
    local err, envelope
    if seq then
      err_len = tonumber(err_len)
      err = string.sub(member, at, at + err_len - 1)
      envelope = string.sub(member, at + err_len)
    else
      -- Scheduled by an earlier version: "<seq>:<attempt>", its payload in the hash.
      seq, attempt = string.match(member, '^(%d+):(%d+)$')
      envelope = redis.call('HGET', payloads, member .. '|e') or ''
      err = redis.call('HGET', payloads, member .. '|err') or ''
      redis.call('HDEL', payloads, member .. '|e', member .. '|err')
    end
    if seq then
      redis.call('XADD', retry, '*', 'seq', seq, 'a', attempt, 'err', err, 'e', envelope)
    end
  end
  -- The due members are the lowest-ranked ones, in the order read: one removal for all.
  if #due > 0 then redis.call('ZREMRANGEBYRANK', schedule, 0, #due - 1) end
  local next_due = redis.call('ZRANGE', schedule, 0, 0, 'WITHSCORES')
  return { #due, tonumber(next_due[2] or '0') }
end

redis.register_function('sh_group_promote_v2', group_promote)
redis.register_function('sh_group_promote_v1', group_promote)
