#!lua name=streamhub
--[[
  streamhub's Redis Function library. Loaded with FUNCTION LOAD REPLACE by every
  streamhub node at start and again whenever a call answers "Function not found".

  The library is assembled from lua/*.lua: this prelude (shared helpers) followed by
  one file per atomic operation, each registering one function. A function whose
  meaning changes gets a new name (…_v2); the old name stays until a major release.

  The double-brace placeholders below are filled in from the node's configuration when the library
  is loaded; every node of one deployment must use the same values.

  Every key a function touches arrives through KEYS, and all of a topic's keys share
  the hash tag {topic}, so each call touches exactly one cluster slot.
]]

local DEFAULT_MAX_LEN = {{retention_max_len}}
local DEFAULT_IDEM_MS = {{idempotency_window_ms}}
local MAX_PAYLOAD = {{max_payload_bytes}}
local MAX_HEADERS = {{max_headers}}
local MAX_HEADER_BYTES = {{max_header_bytes}}
local MAX_TOPIC_BYTES = {{max_topic_bytes}}
local MAX_IDEM_KEY_BYTES = {{max_idempotency_key_bytes}}
local DEFAULT_HARD_MAX_LEN = {{retention_hard_max_len}}

-- Errors carry a stable code after the "SH" prefix; src/store/error.rs maps them.
local function fail(code, message)
  return redis.error_reply('SH ' .. code .. ' ' .. message)
end

-- ---- MessagePack writer: just the types the envelope uses ----------------------
local function be(n, bytes)
  local out = {}
  for i = bytes, 1, -1 do
    out[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(out)
end

local function mp_str(s)
  local n = #s
  if n < 32 then return string.char(0xa0 + n) .. s end
  if n < 256 then return '\217' .. string.char(n) .. s end
  if n < 65536 then return '\218' .. be(n, 2) .. s end
  return '\219' .. be(n, 4) .. s
end

local function mp_bin(s)
  local n = #s
  if n < 256 then return '\196' .. string.char(n) .. s end
  if n < 65536 then return '\197' .. be(n, 2) .. s end
  return '\198' .. be(n, 4) .. s
end

local function mp_uint(n)
  if n < 128 then return string.char(n) end
  if n < 256 then return '\204' .. string.char(n) end
  if n < 65536 then return '\205' .. be(n, 2) end
  if n < 4294967296 then return '\206' .. be(n, 4) end
  return '\207' .. be(n, 8)
end

local function mp_map_header(n)
  if n < 16 then return string.char(0x80 + n) end
  return '\222' .. be(n, 2)
end

-- ---- topic keys ---------------------------------------------------------------
-- The tag of a key built by src/keys.rs: "<prefix>:{<topic>}:<suffix>".
local function topic_of(key, suffix)
  return string.match(key, '^.-:{([^{}]+)}:' .. suffix .. '$')
end

local function valid_topic(topic)
  return topic ~= nil and string.match(topic, '^[%w%._:@=+%-]+$') ~= nil
end

-- True when s is well-formed UTF-8 (header values must be, like streamhub's own).
local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    local len
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then len = 3
    elseif c >= 0xF0 and c <= 0xF4 then len = 4
    else return false end
    if i + len - 1 > n then return false end
    for j = i + 1, i + len - 1 do
      local b = string.byte(s, j)
      if b < 0x80 or b > 0xBF then return false end
    end
    local c2 = string.byte(s, i + 1)
    if (c == 0xE0 and c2 < 0xA0) or (c == 0xED and c2 > 0x9F)
      or (c == 0xF0 and c2 < 0x90) or (c == 0xF4 and c2 > 0x8F) then
      return false
    end
    i = i + len
  end
  return true
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), t
end

-- A UUID v7 minted inside Redis: 48 bits of milliseconds, then random bits.
local function uuid_v7(ms)
  local hex = string.format('%012x', ms)
  local r = {}
  for i = 1, 5 do r[i] = string.format('%04x', math.random(0, 65535)) end
  local variant = string.format('%x', 8 + math.random(0, 3))
  return string.sub(hex, 1, 8) .. '-' .. string.sub(hex, 9, 12) .. '-7' .. string.sub(r[1], 2, 4)
    .. '-' .. variant .. string.sub(r[2], 2, 4) .. '-' .. r[3] .. r[4] .. r[5]
end

-- The topic's (epoch, top seq). When the meta hash is missing, a fresh epoch is
-- chosen and numbering continues after the stream's last id (0 for a new topic),
-- so an entry id is never reused; nothing is written here (see commit_meta).
local function load_meta(meta, stream)
  local m = redis.call('HMGET', meta, 'epoch', 'seq')
  if m[1] then
    return m[1], tonumber(m[2]), false
  end
  local start = 0
  if redis.call('EXISTS', stream) == 1 then
    local info = redis.call('XINFO', 'STREAM', stream)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        start = tonumber(string.match(info[i + 1], '^(%d+)'))
      end
    end
  end
  local _, t = now_ms()
  local epoch = string.sub(redis.sha1hex(t[1] .. '.' .. t[2] .. '.' .. math.random() .. meta), 1, 16)
  return epoch, start, true
end

-- `base` is the seq before the first one of this epoch (0 for a new topic; the
-- stream's last id when only the meta was lost): readers deliver a new epoch from it.
local function commit_meta(meta, epoch, seq, created, base)
  if created then
    local ms = now_ms()
    redis.call('HSET', meta, 'epoch', epoch, 'seq', seq, 'created_ms', ms, 'base', base)
  else
    redis.call('HSET', meta, 'seq', seq)
  end
end

-- Look up an idempotency record: returns epoch, seq, id or nil.
local function idem_lookup(key)
  local rec = redis.call('GET', key)
  if not rec then return nil end
  local e, s, id = string.match(rec, '^(%S+) (%d+) (%S+)$')
  return e, tonumber(s), id
end

-- ---- consumer groups ------------------------------------------------------------
-- A stream entry's field list as a table.
local function fields_of(list)
  local t = {}
  for i = 1, #list, 2 do t[list[i]] = list[i + 1] end
  return t
end

-- Whether delivery (id, count) of `group` still holds its lease: "ok" when the entry is
-- pending with exactly that delivery count, "lease_expired" when it was delivered again
-- since, "unknown" when it is not pending.
local function pending_status(stream, group, id, count)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if #p == 0 then return 'unknown' end
  if tonumber(p[1][4]) ~= count then return 'lease_expired' end
  return 'ok'
end

-- How often (in seqs) a topic with consumer groups re-computes what retention may trim.
local GROUP_TRIM_EVERY = 64

-- The lowest seq some consumer group of the topic still needs (pending, or not yet
-- delivered to it); nil when the topic has no groups.
local function group_floor(stream, meta)
  local names = redis.call('HGET', meta, 'groups')
  if not names or names == '' then return nil end
  local floor = nil
  local info = redis.call('XINFO', 'GROUPS', stream)
  for _, g in ipairs(info) do
    local f = fields_of(g)
    local need = tonumber(string.match(f['last-delivered-id'] or '0-0', '^(%d+)')) + 1
    if tonumber(f['pending'] or 0) > 0 then
      local oldest = redis.call('XPENDING', stream, f['name'], '-', '+', 1)
      if #oldest > 0 then
        need = math.min(need, tonumber(string.match(oldest[1][1], '^(%d+)')))
      end
    end
    if not floor or need < floor then floor = need end
  end
  return floor
end

-- Append one envelope with entry id <seq>-0 and apply retention. Without consumer
-- groups: XADD MAXLEN ~ max_len (at least max_len entries stay). With groups (G6): the
-- cut never passes the lowest seq a group still needs, unless the stream would then hold
-- more than hard_max entries (0 = no hard cap); such forced trims are counted in the
-- meta field "forced_trimmed" and logged in Redis's log.
local function append(stream, meta, seq, envelope, max_len, hard_max)
  local groups = redis.call('HGET', meta, 'groups')
  if max_len > 0 and (not groups or groups == '') then
    redis.call('XADD', stream, 'MAXLEN', '~', max_len, seq .. '-0', 'e', envelope)
    return
  end
  redis.call('XADD', stream, seq .. '-0', 'e', envelope)
  if max_len <= 0 or seq % GROUP_TRIM_EVERY ~= 0 then return end
  local cut = seq - max_len + 1
  local floor = group_floor(stream, meta)
  if floor and floor < cut then
    if hard_max > 0 and seq - floor + 1 > hard_max then
      local forced = seq - hard_max + 1
      redis.call('HINCRBY', meta, 'forced_trimmed', forced - floor)
      redis.log(redis.LOG_WARNING, 'streamhub: hard cap trims ' .. (forced - floor)
        .. ' entries still needed by a consumer group of ' .. stream)
      cut = forced
    else
      cut = floor
    end
  end
  if cut > 1 then
    redis.call('XTRIM', stream, 'MINID', '~', cut .. '-0')
  end
end

local function hint(channel, epoch, seq)
  redis.call('SPUBLISH', channel, epoch .. ' ' .. seq)
end


