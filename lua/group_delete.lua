
--[[ sh_group_delete_v1 — delete a consumer group and everything it holds.
  KEYS[1]  stream          <prefix>:{T}:s
  KEYS[2]  retry stream    <prefix>:{T}:g:<G>:r
  KEYS[3]  retry schedule  <prefix>:{T}:g:<G>:z
  KEYS[4]  retry payloads  <prefix>:{T}:g:<G>:p
  KEYS[5]  dead letters    <prefix>:{T}:g:<G>:d
  KEYS[6]  group counters  <prefix>:{T}:g:<G>:m
  KEYS[7]  topic meta      <prefix>:{T}:m
  KEYS[8]  group definition <prefix>:{T}:g:<G>:def
  ARGV[1]  group name
  Returns  1 when the group existed, 0 otherwise. Its pending deliveries, scheduled
  retries and dead letters are discarded; retention no longer keeps entries for it.
]]
local function group_delete(keys, args)
  local group = args[1]
  local existed = 0
  local ok, n = pcall(redis.call, 'XGROUP', 'DESTROY', keys[1], group)
  if ok and n == 1 then existed = 1 end
  redis.call('DEL', keys[2], keys[3], keys[4], keys[5], keys[6], keys[8])
  local names = redis.call('HGET', keys[7], 'groups')
  if names then
    local kept = {}
    for name in string.gmatch(names, '%S+') do
      if name ~= group then table.insert(kept, name) end
    end
    if #kept == 0 then
      redis.call('HDEL', keys[7], 'groups')
      if redis.call('HEXISTS', keys[7], 'epoch') == 0 then redis.call('DEL', keys[7]) end
    else
      redis.call('HSET', keys[7], 'groups', table.concat(kept, ' '))
    end
  end
  return existed
end

redis.register_function('sh_group_delete_v1', group_delete)
