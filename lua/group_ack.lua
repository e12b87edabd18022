
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
  -- Every lease is checked first; the acknowledged ids then go in one XACK per stream and
  -- one counter update, whatever their number.
  local acked = { [keys[1]] = {}, [keys[2]] = {} }
  local seen = {}
  for i = 2, #args, 3 do
    local src = (args[i] == 'r') and keys[2] or keys[1]
    local id, count = args[i + 1], tonumber(args[i + 2])
    local status
    if seen[src .. ' ' .. id] then
      status = 'unknown' -- the same delivery twice in one call: acknowledged once
    else
      status = pending_status(src, group, id, count)
    end
    if status == 'ok' then
      seen[src .. ' ' .. id] = true
      table.insert(acked[src], id)
      status = 'acked'
    end
    table.insert(out, status)
  end
  local main, retry = acked[keys[1]], acked[keys[2]]
  call_chunked({ 'XACK', keys[1], group }, main)
  call_chunked({ 'XACK', keys[2], group }, retry)
  call_chunked({ 'XDEL', keys[2] }, retry)
  if #main + #retry > 0 then redis.call('HINCRBY', keys[3], 'acked', #main + #retry) end
  return out
end

redis.register_function('sh_group_ack_v1', group_ack)
