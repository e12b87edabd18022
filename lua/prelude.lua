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
local DEFAULT_MAX_AGE_MS = {{retention_max_age_ms}}
local DEFAULT_TTL_MS = {{retention_default_ttl_ms}}
-- [[retention.topics]] of the configuration, in order: { pattern, max_len, max_age_ms,
-- default_ttl_ms } with -1 for "not set" (the default above applies).
local RETENTION_RULES = {{retention_rules}}

-- Errors carry a stable code after the "SH" prefix; src/store/error.rs maps them.
local function fail(code, message)
  return redis.error_reply('SH ' .. code .. ' ' .. message)
end

-- A whole number as text for a command's argument or a stored string: string.format's %d.
-- Lua's own conversion (a number given to redis.call, or joined by `..`) is %.14g, which
-- writes 10^14 and above as 1e+14: a seq that large would make a wrong entry id. It costs
-- about the same. Constant numbers in calls are written as strings ('1'), which need no
-- conversion at all.
local function int(n)
  return string.format('%d', n)
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

-- The replication id of the primary running this call (INFO replication: master_replid).
-- Redis gives a primary a new one whenever its history may differ from its predecessor's:
-- at every start (even from an RDB or AOF file), when a replica is promoted (REPLICAOF NO
-- ONE, a Sentinel or Cluster failover), and when the first replica attaches to a primary
-- without a replication backlog. Within one id, a primary's data only moves forward.
local function replication_id()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or ''
end

-- The numeric part of a stream's last-generated-id; 0 when the stream does not exist.
local function last_id(stream)
  if redis.call('EXISTS', stream) == 0 then return 0 end
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return tonumber(string.match(info[i + 1], '^(%d+)'))
    end
  end
  return 0
end

local function new_epoch(meta)
  local _, t = now_ms()
  return string.sub(redis.sha1hex(t[1] .. '.' .. t[2] .. '.' .. math.random() .. meta), 1, 16)
end

-- The topic's state before a write, as a table:
--   epoch    the epoch new seqs get
--   seq      the committed top: the last seq in the stream, what readers see
--   staged   the last seq assigned (>= seq): seq+1 .. staged wait in the staging stream
--            for their replicas (durability = "replicated", lua/publish.lua)
--   rid      this primary's replication id, recorded by commit_meta
--   created  true when this write starts a new epoch; then base (the seq before the
--            epoch's first) and prev (the epoch it follows, when known) are set
-- A new epoch starts when the meta hash is missing (history lost: numbering continues
-- after the stream's and staging stream's last ids, so an entry id is never reused) and
-- when the meta was last written under another replication id ("rid"): this primary
-- cannot know whether its predecessor wrote seqs it never received (an asynchronous
-- replica promoted, a restart from a file that lacks the last writes), so the seqs after
-- the ones it holds get a new epoch and never name a second message. The old epoch's
-- seqs up to base are the same messages as before (a replica or a file holds a prefix of
-- its primary's history), so readers carry a position (prev, n <= base) over exactly
-- (src/delivery/resume.rs). Nothing is written here (see commit_meta).
-- The epochs whose positions carry over into an epoch started after `epoch` at `bound`
-- (the meta's `prev`): "<epoch>:<bound>", then that epoch's own links, each bounded by
-- the smaller of its bound and this one (a position carries over only if every step
-- keeps it), at most 4 entries. An entry without ":<bound>" (written before chains) is
-- bounded by the old meta's base. Chained because several epochs can start before a
-- reader looks again (a slot moved twice during a resharding, a failover after one).
local function link_chain(epoch, bound, old_links, old_base)
  local out = { epoch .. ':' .. bound }
  for entry in string.gmatch(old_links or '', '[^,]+') do
    if #out >= 4 then break end
    local e, b = string.match(entry, '^([^:]+):(%d+)$')
    if not e then e, b = entry, old_base end
    table.insert(out, e .. ':' .. math.min(tonumber(b), bound))
  end
  return table.concat(out, ',')
end

local function load_meta(meta, stream, staging)
  -- `groups` too, for append (read once per call here rather than once per message there).
  local m = redis.call('HMGET', meta, 'epoch', 'seq', 'staged', 'rid', 'base', 'prev', 'groups')
  local rid = replication_id()
  if m[1] then
    local seq = tonumber(m[2])
    local t = { epoch = m[1], seq = seq, staged = math.max(seq, tonumber(m[3] or '0')), rid = rid, groups = m[7] }
    if m[4] and m[4] ~= rid then
      t.prev = link_chain(m[1], t.staged, m[6], tonumber(m[5] or '0'))
      t.epoch, t.base, t.created = new_epoch(meta), t.staged, true
    elseif not m[4] then
      t.adopt = true -- written before replication ids were recorded: record this one
    end
    return t
  end
  local start = last_id(stream)
  local staged = math.max(start, last_id(staging))
  return { epoch = new_epoch(meta), seq = start, staged = staged, rid = rid, created = true, base = staged,
    groups = m[7] }
end

-- Writes the meta after a write that assigned seqs (or, staging, only touched it).
local function commit_meta(meta, t)
  if t.created then
    redis.call('HSET', meta, 'epoch', t.epoch, 'seq', int(t.seq), 'staged', int(t.staged), 'created_ms', int(now_ms()),
      'base', int(t.base), 'rid', t.rid, 'prev', t.prev or '')
  elseif t.adopt then
    redis.call('HSET', meta, 'seq', int(t.seq), 'staged', int(t.staged), 'rid', t.rid)
  else
    redis.call('HSET', meta, 'seq', int(t.seq), 'staged', int(t.staged))
  end
end

-- True when `topic` matches `pattern` (`*` any run of characters, `?` one): the same
-- iterative matcher as src/auth/pattern.rs.
local function glob(pattern, topic)
  local pi, ti, star, mark = 1, 1, nil, 1
  local np, nt = #pattern, #topic
  while ti <= nt do
    local pc = string.sub(pattern, pi, pi)
    if pi <= np and (pc == '?' or pc == string.sub(topic, ti, ti)) then
      pi = pi + 1; ti = ti + 1
    elseif pi <= np and pc == '*' then
      star = pi; mark = ti; pi = pi + 1
    elseif star then
      pi = star + 1; mark = mark + 1; ti = mark
    else
      return false
    end
  end
  while pi <= np and string.sub(pattern, pi, pi) == '*' do pi = pi + 1 end
  return pi > np
end

-- The retention of a topic (max_len, max_age_ms, default_ttl_ms): its first matching
-- rule over the library's defaults, like RetentionConfig::for_topic.
local function retention_of(topic)
  for _, r in ipairs(RETENTION_RULES) do
    if glob(r[1], topic) then
      local function pick(v, default) if v >= 0 then return v end return default end
      return pick(r[2], DEFAULT_MAX_LEN), pick(r[3], DEFAULT_MAX_AGE_MS), pick(r[4], DEFAULT_TTL_MS)
    end
  end
  return DEFAULT_MAX_LEN, DEFAULT_MAX_AGE_MS, DEFAULT_TTL_MS
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
-- Calls `prefix` followed by the values of `list`, at most UNPACK_CHUNK of them per call:
-- Lua's unpack is bounded by its stack (about 8,000 values), so a list of thousands
-- (acks of `groups.max_fetch` tokens, a presence list of `presence.max_list` entries)
-- cannot go in one call. Returns the replies' values, concatenated (for commands that
-- answer one value per item, like HMGET). UNPACK_CHUNK is even: ZADD's score and member
-- pairs stay whole.
local UNPACK_CHUNK = 1000
local function call_chunked(prefix, list)
  local out = {}
  for i = 1, #list, UNPACK_CHUNK do
    local cmd = {}
    for _, v in ipairs(prefix) do cmd[#cmd + 1] = v end
    for j = i, math.min(i + UNPACK_CHUNK - 1, #list) do cmd[#cmd + 1] = list[j] end
    local reply = redis.call(unpack(cmd))
    if type(reply) == 'table' then
      for _, v in ipairs(reply) do out[#out + 1] = v end
    end
  end
  return out
end

local function fields_of(list)
  local t = {}
  for i = 1, #list, 2 do t[list[i]] = list[i + 1] end
  return t
end

-- ---- a batch of one stream's deliveries ----------------------------------------
-- A worker's acks and failures come in batches of ids that lie close together (a settle
-- call's 16, say). Looked up one by one, every id costs a call and a seek: XPENDING of one
-- id, and XRANGE of one entry, which walks the entry's node from its start (~13,000
-- instructions per id on Redis 7.0, ARCHITECTURE 19). Over the batch's span it is one
-- bounded call each. streamhub passes each stream's ids lowest first
-- (src/store/groups.rs, `lease_order`), so the span is from the first id to the last,
-- found without parsing every id. An id the span's read did not return is looked up
-- alone: with ids in another order (a caller of an earlier release) that is every id out
-- of the span, and the answers stay exact.

-- The delivery count of each of `ids` that is pending in `group`, by id (false: not
-- pending). One XPENDING over the span from the first id to the last, reading at most
-- twice as many pending entries as asked for (plus 16).
local function pending_counts(stream, group, ids)
  local counts = {}
  local n = #ids
  if n > 1 then
    local p = redis.call('XPENDING', stream, group, ids[1], ids[n], int(2 * n + 16))
    for i = 1, #p do counts[p[i][1]] = p[i][4] end
  end
  for i = 1, n do
    local id = ids[i]
    if counts[id] == nil then
      -- '1', not 1: a number argument is formatted by the C library's printf on every call.
      local p = redis.call('XPENDING', stream, group, id, id, '1')
      counts[id] = #p > 0 and p[1][4]
    end
  end
  return counts
end

-- Whether delivery (id, count) still holds its lease, from `pending_counts`: "ok" when
-- the entry is pending with exactly that delivery count, "lease_expired" when it was
-- delivered again since, "unknown" when it is not pending.
local function lease_status(counts, id, count)
  local pending = counts[id]
  if not pending then return 'unknown' end
  if pending ~= count then return 'lease_expired' end
  return 'ok'
end

-- The fields ({ field, value, … }) of the entries of a topic's stream among `ids`, by
-- id, read with one XRANGE over the span from the first id to the last when it can hold
-- at most twice as many entries as asked for: a topic's ids are "<seq>-0", so their seqs
-- say how many entries a span holds (a retry stream's are times: it has no such read).
-- An id not in the table is read alone by `entry_of`, when it is needed.
local function span_entries(stream, ids)
  local found = {}
  local n = #ids
  if n > 1 then
    local lo = tonumber(string.match(ids[1], '^(%d+)-'))
    local hi = tonumber(string.match(ids[n], '^(%d+)-'))
    if lo and hi and hi >= lo and hi - lo < 2 * n then
      local r = redis.call('XRANGE', stream, ids[1], ids[n], 'COUNT', int(2 * n))
      for i = 1, #r do found[r[i][1]] = r[i][2] end
    end
  end
  return found
end

-- The fields of entry `id` of `stream`: from `found` (`span_entries`), else read alone
-- and kept there; false when there is no such entry.
local function entry_of(found, stream, id)
  local fields = found[id]
  if fields == nil then
    local r = redis.call('XRANGE', stream, id, id)
    fields = #r > 0 and r[1][2]
    found[id] = fields
  end
  return fields
end

-- Acknowledges `ids` on a group's retry stream and trims what no one needs any more,
-- instead of deleting each entry (an XDEL seeks and rewrites the entry's node: ~13,000
-- instructions per entry). An entry older than the oldest pending one was delivered
-- (XREADGROUP hands a stream out in id order) and is not pending, so it was acknowledged;
-- with nothing pending, every entry up to the group's last delivered one was. What stays:
-- everything from the oldest pending entry on, and (`~` trims whole nodes only) up to a
-- node below it; the group is past them and never reads them again. (Reclaim and fail
-- read only pending entries, and streamhub removes only consumers that hold nothing:
-- lua/group_consumers.lua.)
local function release_retry(retry, group, ids)
  if #ids == 0 then return end
  call_chunked({ 'XACK', retry, group }, ids)
  local bound = nil
  local oldest = redis.call('XPENDING', retry, group, '-', '+', '1')
  if #oldest > 0 then
    bound = oldest[1][1]
  else
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', retry)) do
      local f = fields_of(g)
      if f['name'] == group then bound = f['last-delivered-id'] end
    end
  end
  if bound then redis.call('XTRIM', retry, 'MINID', '~', bound) end
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

-- ---- MessagePack reader: just enough to find the envelope's "ts" -------------------
-- (Redis's bundled cmsgpack does not read bin values, which every envelope holds.)
-- The big-endian unsigned integer of `n` bytes at `pos`.
local function read_be(s, pos, n)
  local v = 0
  for i = 0, n - 1 do v = v * 256 + string.byte(s, pos + i) end
  return v
end

-- The value at `pos`: its integer (for uints), its string (for str), and the position
-- after it; nil for a type the envelope layout does not use.
local function mp_read(s, pos)
  local b = string.byte(s, pos)
  if not b then return nil end
  if b < 0x80 then return b, pos + 1 end
  if b >= 0xa0 and b <= 0xbf then local n = b - 0xa0; return string.sub(s, pos + 1, pos + n), pos + 1 + n end
  if b >= 0x80 and b <= 0x8f then
    local p = pos + 1
    for _ = 1, (b - 0x80) * 2 do
      local _, q = mp_read(s, p); if not q then return nil end; p = q
    end
    return true, p
  end
  if b == 0xc0 or b == 0xc2 or b == 0xc3 then return true, pos + 1 end
  local uint = { [0xcc] = 1, [0xcd] = 2, [0xce] = 4, [0xcf] = 8 }
  if uint[b] then return read_be(s, pos + 1, uint[b]), pos + 1 + uint[b] end
  local sized = { [0xd9] = 1, [0xda] = 2, [0xdb] = 4, [0xc4] = 1, [0xc5] = 2, [0xc6] = 4 }
  if sized[b] then
    local w = sized[b]
    local n = read_be(s, pos + 1, w)
    return string.sub(s, pos + 1 + w, pos + w + n), pos + 1 + w + n
  end
  if b == 0xde then
    local p = pos + 3
    for _ = 1, read_be(s, pos + 1, 2) * 2 do
      local _, q = mp_read(s, p); if not q then return nil end; p = q
    end
    return true, p
  end
  return nil
end

-- The publish time (ms) of an envelope: the value of its key "ts"; nil when the bytes
-- are not an envelope.
local function envelope_ts(s)
  local b = string.byte(s, 1)
  local n, pos
  if b and b >= 0x80 and b <= 0x8f then n, pos = b - 0x80, 2
  elseif b == 0xde and #s >= 3 then n, pos = read_be(s, 2, 2), 4
  else return nil end
  for _ = 1, n do
    local key, after_key = mp_read(s, pos)
    if not after_key then return nil end
    local value, after_value = mp_read(s, after_key)
    if not after_value then return nil end
    if key == 'ts' then return tonumber(value) end
    pos = after_value
  end
  return nil
end

-- The publish time (ms) of a stream entry's envelope (field "e"); nil when the entry is
-- not a decodable envelope (it is then kept by age retention).
local function entry_ts(entry)
  local f = fields_of(entry[2])
  if not f['e'] then return nil end
  return envelope_ts(f['e'])
end

local function entry_seq(entry)
  return tonumber(string.match(entry[1], '^(%d+)'))
end

-- Retention by age. Entry ids are seqs, not times, so the cut is found from the
-- envelopes' publish times: the lowest seq from which on no entry is older than `cutoff`
-- (binary search over seqs, one XRANGE COUNT 1 per step: O(log n)); nil when the oldest
-- entry is not older. Publish times are nearly monotonic in seq (they come from the
-- publishing nodes' clocks, or Redis TIME for sh_publish_raw_v1), so clock skew between
-- nodes moves the cut by at most the skew.
local function age_cut(stream, cutoff)
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #first == 0 then return nil end
  local ts = entry_ts(first[1])
  if not ts or ts >= cutoff then return nil end
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  local hi = entry_seq(last[1])
  local last_ts = entry_ts(last[1])
  if last_ts and last_ts < cutoff then return hi + 1 end
  local lo = entry_seq(first[1])
  -- The first entry at or after lo is old; the first at or after hi is not.
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    local e = redis.call('XRANGE', stream, mid .. '-0', '+', 'COUNT', 1)[1]
    local t = entry_ts(e)
    if t and t < cutoff then lo = entry_seq(e) else hi = mid end
  end
  return hi
end

-- Append one envelope with entry id <seq>-0 and apply retention; returns how many
-- entries retention by age removed. Without consumer groups and without an age limit:
-- XADD MAXLEN ~ max_len (at least max_len entries stay). Otherwise every 64 seqs the
-- cut is computed from max_len and max_age (the higher one wins), and with groups (G6)
-- it never passes the lowest seq a group still needs, unless the stream would then hold
-- more than hard_max entries (0 = no hard cap); such forced trims are counted in the
-- meta field "forced_trimmed" and logged in Redis's log. With an age limit and no
-- groups, the stream also expires max_age after its newest entry (PEXPIRE, renewed
-- here), so an idle topic's old entries go too.
local function append(stream, meta, seq, envelope, max_len, hard_max, max_age, groups)
  -- The meta's `groups` field as the caller read it (false: none); nil: read it here.
  if groups == nil then groups = redis.call('HGET', meta, 'groups') end
  local has_groups = groups and groups ~= ''
  if max_len > 0 and not has_groups then
    redis.call('XADD', stream, 'MAXLEN', '~', int(max_len), int(seq) .. '-0', 'e', envelope)
  else
    redis.call('XADD', stream, int(seq) .. '-0', 'e', envelope)
  end
  if max_age > 0 and not has_groups then
    redis.call('PEXPIRE', stream, int(max_age))
  end
  if seq % GROUP_TRIM_EVERY ~= 0 or (max_age <= 0 and (max_len <= 0 or not has_groups)) then return 0 end
  local cut, by_age = 0, false
  if max_len > 0 and has_groups then cut = seq - max_len + 1 end
  if max_age > 0 then
    local a = age_cut(stream, now_ms() - max_age)
    if a and a > cut then cut, by_age = a, true end
  end
  if cut <= 1 then return 0 end
  local floor = has_groups and group_floor(stream, meta)
  if floor and floor < cut then
    if hard_max > 0 and seq - floor + 1 > hard_max then
      local forced = seq - hard_max + 1
      redis.call('HINCRBY', meta, 'forced_trimmed', forced - floor)
      redis.log(redis.LOG_WARNING, 'streamhub: hard cap trims ' .. (forced - floor)
        .. ' entries still needed by a consumer group of ' .. stream)
      cut, by_age = forced, false
    else
      cut = floor
    end
  end
  local removed = redis.call('XTRIM', stream, 'MINID', '~', int(cut) .. '-0')
  if by_age then return removed end
  return 0
end

local function hint(channel, epoch, seq)
  redis.call('SPUBLISH', channel, epoch .. ' ' .. int(seq))
end

-- ---- staging (durability = "replicated") ------------------------------------------
-- How many seqs may wait in one topic's staging stream (publish.max_staged).
local MAX_STAGED = {{max_staged}}

-- The staging stream <prefix>:{T}:x of a topic, for the functions whose KEYS were fixed
-- before it existed (sh_publish_v1, sh_publish_v2, sh_publish_raw_v1): the same hash tag
-- as the meta key, so the same cluster slot.
local function staging_of(meta)
  return string.sub(meta, 1, -2) .. 'x'
end

-- Moves staged entries into the stream, in seq order: every one up to `upto`, then those
-- queued behind them by publishes that cannot wait for replicas (field r, see
-- lua/publish.lua); stops at the first other one. Each is appended as a publish appends
-- (retention included). Updates t.seq; deletes the staging stream once it is empty.
-- Returns how many entries retention by age removed.
local function move_staged(t, meta, stream, staging, upto, max_len, hard_max, max_age)
  local aged, moved = 0, false
  local function move(entries)
    for _, e in ipairs(entries) do
      local s = entry_seq(e)
      if s > t.seq then
        local f = fields_of(e[2])
        if s ~= t.seq + 1 or (s > upto and not f['r']) then return false end
        aged = aged + append(stream, meta, s, f['e'] or '', max_len, hard_max, max_age, t.groups)
        t.seq, moved = s, true
      end
    end
    return true
  end
  if upto > t.seq then
    move(redis.call('XRANGE', staging, '(' .. t.seq .. '-0', upto .. '-0'))
  end
  while t.seq < t.staged and t.seq >= upto do
    local page = redis.call('XRANGE', staging, '(' .. t.seq .. '-0', '+', 'COUNT', 64)
    if #page == 0 or not move(page) then break end
  end
  if moved then
    if t.seq >= t.staged then
      redis.call('DEL', staging)
    else
      redis.call('XTRIM', staging, 'MINID', (t.seq + 1) .. '-0')
    end
  end
  return aged
end


