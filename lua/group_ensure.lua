
--[[ sh_group_ensure_v1 — create a consumer group on a topic (idempotent).
  KEYS[1]  stream        <prefix>:{T}:s
  KEYS[2]  retry stream  <prefix>:{T}:g:<G>:r
  KEYS[3]  topic meta    <prefix>:{T}:m (field "groups": the topic's group names, space
           separated; publish reads it so that retention keeps what groups still need)
  ARGV[1]  group name
  ARGV[2]  start: "$" (new messages only), "0" (earliest) or an entry id "<seq>-0"
  Returns  1 when the group was created, 0 when it existed (its position is kept).
  The group reads the topic's stream and its own retry stream; both are created if absent.
  The topic's stream loses any expiry (retention by age sets one on topics without groups):
  the consumer group lives in that key.
]]
local function group_ensure(keys, args)
  local stream, retry, meta = keys[1], keys[2], keys[3]
  local group, start = args[1], args[2]
  local created = 0
  local ok = pcall(redis.call, 'XGROUP', 'CREATE', stream, group, start, 'MKSTREAM')
  if ok then created = 1 end
  pcall(redis.call, 'XGROUP', 'CREATE', retry, group, '0', 'MKSTREAM')
  redis.call('PERSIST', stream)
  local groups = redis.call('HGET', meta, 'groups') or ''
  if not string.find(' ' .. groups .. ' ', ' ' .. group .. ' ', 1, true) then
    redis.call('HSET', meta, 'groups', (groups == '' and group) or (groups .. ' ' .. group))
  end
  return created
end

redis.register_function('sh_group_ensure_v1', group_ensure)
