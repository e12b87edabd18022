
--[[ sh_topic_info_v1 — a topic's position and retention, in one snapshot.
  KEYS[1]  meta hash   <prefix>:{T}:m
  KEYS[2]  stream      <prefix>:{T}:s
  Returns  { epoch ('' when the topic has no meta), top seq, first retained seq
             (0 when empty), base (seq before the epoch's first), retained length,
             created_ms (0 when unknown), consumer group names (space separated) }
  Read-only (no-writes).
]]
local function topic_info(keys, args)
  local meta, stream = keys[1], keys[2]
  local m = redis.call('HMGET', meta, 'epoch', 'seq', 'created_ms', 'base', 'groups')
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  local first_seq = 0
  if #first > 0 then first_seq = tonumber(string.match(first[1][1], '^(%d+)')) end
  return { m[1] or '', tonumber(m[2] or '0'), first_seq, tonumber(m[4] or '0'), redis.call('XLEN', stream),
    tonumber(m[3] or '0'), m[5] or '' }
end

redis.register_function { function_name = 'sh_topic_info_v1', callback = topic_info, flags = { 'no-writes' } }

--[[ sh_topic_info_v2 — sh_topic_info_v1 plus the age of the oldest retained message.
  KEYS, ARGV  as sh_topic_info_v1
  Returns  the seven values of sh_topic_info_v1, then the publish time (ms, from its
           envelope) of the oldest retained entry (0 when the stream is empty or that
           entry is not a decodable envelope).
  Read-only (no-writes).
]]
local function topic_info_v2(keys, args)
  local out = topic_info(keys, args)
  local first = redis.call('XRANGE', keys[2], '-', '+', 'COUNT', 1)
  local oldest = 0
  if #first > 0 then oldest = entry_ts(first[1]) or 0 end
  table.insert(out, oldest)
  return out
end

redis.register_function { function_name = 'sh_topic_info_v2', callback = topic_info_v2, flags = { 'no-writes' } }
