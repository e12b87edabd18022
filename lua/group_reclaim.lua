
--[[ sh_group_reclaim_v1 — take over deliveries whose lease (ack_wait) ran out.
  KEYS[1]  stream        <prefix>:{T}:s
  KEYS[2]  retry stream  <prefix>:{T}:g:<G>:r
  KEYS[3]  group meta    <prefix>:{T}:g:<G>:m
  ARGV[1]  group, ARGV[2] consumer taking them, ARGV[3] min idle ms (ack_wait), ARGV[4] count
  Returns  { deleted, then per reclaimed entry 4 values: source ("m" | "r"), entry id,
             new delivery count, { field, value, … } }
  Entries deleted from a stream while pending (XAUTOCLAIM's third reply) are acked and
  counted in the meta field "deleted", never left to be retried forever.
]]
local function group_reclaim(keys, args)
  local group, consumer, idle, count = args[1], args[2], args[3], tonumber(args[4])
  local out = { 0 }
  for _, pair in ipairs({ { 'm', keys[1] }, { 'r', keys[2] } }) do
    local src, key = pair[1], pair[2]
    local reply = redis.call('XAUTOCLAIM', key, group, consumer, idle, '0-0', 'COUNT', count)
    for _, id in ipairs(reply[3] or {}) do
      redis.call('XACK', key, group, id)
      out[1] = out[1] + 1
    end
    for _, entry in ipairs(reply[2]) do
      local p = redis.call('XPENDING', key, group, entry[1], entry[1], 1)
      local n = 1
      if #p > 0 then n = p[1][4] end
      table.insert(out, src); table.insert(out, entry[1]); table.insert(out, n); table.insert(out, entry[2])
    end
  end
  if out[1] > 0 then redis.call('HINCRBY', keys[3], 'deleted', out[1]) end
  return out
end

redis.register_function('sh_group_reclaim_v1', group_reclaim)
