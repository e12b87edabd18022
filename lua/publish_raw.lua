
--[[ sh_publish_raw_v1 — the documented call for publishing from any Redis client.
  KEYS[1]  meta hash      <prefix>:{T}:m
  KEYS[2]  stream         <prefix>:{T}:s
  KEYS[3]  hint channel   <prefix>:{T}:h
  KEYS[4]  optional idempotency key <prefix>:{T}:i:<key>
  ARGV[1]  payload bytes
  ARGV[2]  optional content type (default application/octet-stream)
  ARGV[3]  optional TTL in ms (0 or absent = the topic's default TTL, if any)
  ARGV[4…] optional header name/value pairs
  Returns  epoch, seq, duplicate (0|1), message id — exactly as sh_publish_v1
  Errors   "SH invalid_keys …", "SH invalid_topic …", "SH invalid_idempotency_key …",
           "SH payload_too_large …", "SH invalid_header …", "SH too_many_headers …",
           "SH headers_too_large …", "SH invalid_request …"; nothing is written when one
           is returned. The checks and limits are those of the HTTP API, except that a
           TTL of 0 means "none".
  The envelope is built here (UUID v7 id, Redis TIME as publish time) with the same
  MessagePack layout streamhub writes, then appended like sh_publish_v2 does, with the
  topic's retention (max_len, max_age, default TTL: the first matching rule of
  retention.topics in the loading node's configuration, else its defaults).
  While the topic has seqs staged by a replicated publish (sh_publish_v4), the message
  queues behind them in the staging stream <prefix>:{T}:x (derived from KEYS[1]: this
  call's KEYS predate it) and becomes readable when they are committed; errors then
  include "SH staging_full …" (publish.max_staged seqs already wait).
]]
local function publish_raw(keys, args)
  if #keys < 3 or #keys > 4 then
    return fail('invalid_keys', 'expected KEYS <p>:{T}:m <p>:{T}:s <p>:{T}:h [<p>:{T}:i:<key>]')
  end
  local meta, stream, channel, idem = keys[1], keys[2], keys[3], keys[4]
  local base = string.match(meta, '^(.-:{[^{}]+}):m$')
  if not base or stream ~= base .. ':s' or channel ~= base .. ':h'
    or (idem and string.sub(idem, 1, #base + 3) ~= base .. ':i:') then
    return fail('invalid_keys', 'expected KEYS <p>:{T}:m <p>:{T}:s <p>:{T}:h [<p>:{T}:i:<key>], one prefix and topic')
  end
  local topic = topic_of(meta, 'm')
  if not valid_topic(topic) or #topic > MAX_TOPIC_BYTES then
    return fail('invalid_topic', 'topic must be 1 to ' .. MAX_TOPIC_BYTES .. ' letters, digits or . _ : @ = + -')
  end
  if idem then
    local key = string.sub(idem, #base + 4)
    if #key == 0 or #key > MAX_IDEM_KEY_BYTES or not string.match(key, '^[!-z|~]+$') then
      return fail('invalid_idempotency_key', 'idempotency key must be 1 to ' .. MAX_IDEM_KEY_BYTES
        .. ' visible ASCII characters other than { and }')
    end
  end
  local payload = args[1]
  if payload == nil then
    return fail('invalid_request', 'ARGV[1] (payload) is required')
  end
  if #payload > MAX_PAYLOAD then
    return fail('payload_too_large', 'payload is ' .. #payload .. ' bytes, limit ' .. MAX_PAYLOAD)
  end
  local ct = args[2]
  if ct == nil or ct == '' then ct = 'application/octet-stream' end
  if #ct > 255 or not string.match(ct, '^[ -~]+$') then
    return fail('invalid_request', 'content type must be 1 to 255 printable ASCII characters')
  end
  local ttl = tonumber(args[3] or '0')
  if ttl == nil or ttl < 0 or ttl ~= math.floor(ttl) then
    return fail('invalid_request', 'ARGV[3] (ttl_ms) must be a non-negative integer')
  end
  local nh = #args - 3
  if nh < 0 then nh = 0 end
  if nh % 2 == 1 then
    return fail('invalid_header', 'headers must come as name/value pairs')
  end
  nh = nh / 2
  if nh > MAX_HEADERS then
    return fail('too_many_headers', nh .. ' headers, limit ' .. MAX_HEADERS)
  end
  -- Header names are sorted so the bytes match what streamhub writes (a BTreeMap).
  local names, values, hbytes = {}, {}, 0
  for i = 0, nh - 1 do
    local name, value = args[4 + i * 2], args[5 + i * 2]
    if #name > 64 or not string.match(name, '^[%w%-_%.]+$') or values[name] then
      return fail('invalid_header', 'header names are 1 to 64 letters, digits, - _ or ., each once')
    end
    if not valid_utf8(value) then
      return fail('invalid_header', 'header values must be UTF-8 text')
    end
    hbytes = hbytes + #name + #value
    values[name] = value
    table.insert(names, name)
  end
  if hbytes > MAX_HEADER_BYTES then
    return fail('headers_too_large', hbytes .. ' header bytes, limit ' .. MAX_HEADER_BYTES)
  end
  table.sort(names)

  local max_len, max_age, default_ttl = retention_of(topic)
  if ttl == 0 then ttl = default_ttl end

  local staging = staging_of(meta)
  local t = load_meta(meta, stream, staging)
  local queued = t.staged > t.seq
  if queued and t.staged - t.seq + 1 > MAX_STAGED then
    return fail('staging_full', (t.staged - t.seq) .. ' seqs of this topic wait for replicas (publish.max_staged '
      .. MAX_STAGED .. ')')
  end
  if idem then
    local dup_epoch, dup_seq, dup_id = idem_lookup(idem)
    if dup_epoch then return { dup_epoch, dup_seq, 1, dup_id } end
  end

  local ms = now_ms()
  local id = uuid_v7(ms)
  local fields = 5
  if ttl > 0 then fields = fields + 1 end
  if nh > 0 then fields = fields + 1 end
  local parts = { mp_map_header(fields), mp_str('v'), mp_uint(1), mp_str('id'), mp_str(id),
    mp_str('ts'), mp_uint(ms) }
  if ttl > 0 then
    table.insert(parts, mp_str('ttl')); table.insert(parts, mp_uint(ttl))
  end
  table.insert(parts, mp_str('ct')); table.insert(parts, mp_str(ct))
  if nh > 0 then
    table.insert(parts, mp_str('h')); table.insert(parts, mp_map_header(nh))
    for _, name in ipairs(names) do
      table.insert(parts, mp_str(name)); table.insert(parts, mp_str(values[name]))
    end
  end
  table.insert(parts, mp_str('p')); table.insert(parts, mp_bin(payload))

  t.staged = t.staged + 1
  local seq = t.staged
  if queued then
    -- Behind seqs waiting for their replicas: committed right after them (sh_commit_v1).
    redis.call('XADD', staging, seq .. '-0', 'e', table.concat(parts), 'r', '1')
  else
    append(stream, meta, seq, table.concat(parts), max_len, DEFAULT_HARD_MAX_LEN, max_age, t.groups)
    t.seq = seq
  end
  if idem then
    redis.call('SET', idem, t.epoch .. ' ' .. seq .. ' ' .. id, 'PX', DEFAULT_IDEM_MS)
  end
  commit_meta(meta, t)
  if not queued then hint(channel, t.epoch, seq) end
  return { t.epoch, seq, 0, id }
end

redis.register_function('sh_publish_raw_v1', publish_raw)
