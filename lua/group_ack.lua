
--[[ sh_group_ack_v1 — acknowledge deliveries by lease token.
  KEYS[1]  stream        <prefix>:{T}:s
  KEYS[2]  retry stream  <prefix>:{T}:g:<G>:r
  KEYS[3]  group meta    <prefix>:{T}:g:<G>:m (counters)
  ARGV[1]  group name
  ARGV[2…] per delivery, 3 values: source ("m" main | "r" retry), entry id, delivery count
  Returns  one status per delivery: "acked"; "lease_expired" (the entry was redelivered
           since — a newer delivery holds it — so this late ack changes nothing);
           "unknown" (not pending: already acked, dead-lettered or never delivered).
  A delivery is identified by its entry and its delivery count, so an ack from a consumer
  whose lease expired can never acknowledge a later delivery of the same entry.
]]
local function group_ack(keys, args)
  local group = args[1]
  local out = {}
  for i = 2, #args, 3 do
    local src = (args[i] == 'r') and keys[2] or keys[1]
    local id, count = args[i + 1], tonumber(args[i + 2])
    local status = pending_status(src, group, id, count)
    if status == 'ok' then
      redis.call('XACK', src, group, id)
      if src == keys[2] then redis.call('XDEL', src, id) end
      redis.call('HINCRBY', keys[3], 'acked', 1)
      status = 'acked'
    end
    table.insert(out, status)
  end
  return out
end

redis.register_function('sh_group_ack_v1', group_ack)
