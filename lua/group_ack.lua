
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
  local group, stream, retry = args[1], keys[1], keys[2]
  -- Every lease is checked first, with one XPENDING per stream for the whole batch
  -- (`pending_counts`); the acknowledged ids then go in one XACK per stream and one
  -- counter update, whatever their number. Per delivery only what the check needs is
  -- made (no per-delivery table or key string): this runs for every message consumed.
  local ids_main, ids_retry = {}, {}
  for i = 2, #args, 3 do
    local ids = args[i] == 'r' and ids_retry or ids_main
    ids[#ids + 1] = args[i + 1]
  end
  local pending_main = pending_counts(stream, group, ids_main)
  local pending_retry = pending_counts(retry, group, ids_retry)
  local out, n = {}, 0
  local main, retried = {}, {}
  for i = 2, #args, 3 do
    local from_retry = args[i] == 'r'
    local id = args[i + 1]
    local pending = from_retry and pending_retry or pending_main
    local status = lease_status(pending, id, tonumber(args[i + 2]))
    if status == 'ok' then
      pending[id] = false -- the same delivery twice in one call: acknowledged once
      local acked = from_retry and retried or main
      acked[#acked + 1] = id
      status = 'acked'
    end
    n = n + 1
    out[n] = status
  end
  call_chunked({ 'XACK', stream, group }, main)
  release_retry(retry, group, retried)
  if #main + #retried > 0 then redis.call('HINCRBY', keys[3], 'acked', int(#main + #retried)) end
  return out
end

redis.register_function('sh_group_ack_v1', group_ack)
