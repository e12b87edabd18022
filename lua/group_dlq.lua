
--[[ sh_group_replay_v1 — send dead letters back into the group's retry path.
  KEYS[1]  dead letters  <prefix>:{T}:g:<G>:d
  KEYS[2]  retry stream  <prefix>:{T}:g:<G>:r
  ARGV…    dead-letter entry ids
  Returns  the number replayed. Each gets a fresh set of attempts (the next is attempt 1)
  and is delivered to this group only, not to the topic's subscribers.
]]
local function group_replay(keys, args)
  local dlq, retry = keys[1], keys[2]
  local n = 0
  for _, id in ipairs(args) do
    local entry = redis.call('XRANGE', dlq, id, id)
    if #entry > 0 then
      local f = fields_of(entry[1][2])
      redis.call('XADD', retry, '*', 'seq', f['seq'] or '0', 'a', 1, 'err', f['err'] or '', 'e', f['e'] or '')
      redis.call('XDEL', dlq, id)
      n = n + 1
    end
  end
  return n
end

redis.register_function('sh_group_replay_v1', group_replay)
