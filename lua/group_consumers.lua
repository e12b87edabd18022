
--[[ sh_group_drop_consumers_v1 — remove a group's departed consumers that hold nothing.
  KEYS[1]  stream        <prefix>:{T}:s
  KEYS[2]  retry stream  <prefix>:{T}:g:<G>:r
  ARGV[1]  group name
  ARGV[2]  only this consumer ("" = any)
  ARGV[3]  only those idle longer than this many ms (-1 = however idle)
  ARGV[4]  never those whose name starts with this ("" = none kept)
  Returns  how many consumers were removed (one removed from both streams counts twice).
  A consumer is removed from a stream only when it holds nothing pending there, checked
  in the same call: between a check and a removal made in two round trips, the consumer
  could read an entry, and `XGROUP DELCONSUMER` would drop that entry from the pending
  list with it — delivered, never acknowledged, and never delivered again.
]]
local function group_drop_consumers(keys, args)
  local group, only, keep = args[1], args[2], args[4]
  local min_idle = tonumber(args[3])
  local removed = 0
  for _, key in ipairs(keys) do
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', key, group)) do
      local f = fields_of(c)
      local name = f['name']
      if (only == '' or name == only)
        and tonumber(f['pending']) == 0
        and tonumber(f['idle']) > min_idle
        and (keep == '' or string.sub(name, 1, #keep) ~= keep) then
        redis.call('XGROUP', 'DELCONSUMER', key, group, name)
        removed = removed + 1
      end
    end
  end
  return removed
end

redis.register_function('sh_group_drop_consumers_v1', group_drop_consumers)
