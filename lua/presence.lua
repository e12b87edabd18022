
--[[ Presence of a topic's subscribers. Every function takes the topic's presence keys:
  KEYS[1]  meta hash        <prefix>:{T}:m   (its epoch and top seq order the events)
  KEYS[2]  hint channel     <prefix>:{T}:h   (a hint after each event wakes the tails)
  KEYS[3]  clients          <prefix>:{T}:pc  hash: client id → "<n>:<user key><entry JSON>"
  KEYS[4]  expiry           <prefix>:{T}:pz  zset: client id → ms its entry expires at
  KEYS[5]  users            <prefix>:{T}:pu  hash: user key → clients present
  KEYS[6]  leaving          <prefix>:{T}:pl  zset: user key → ms its leave is due at
  KEYS[7]  leaving entries  <prefix>:{T}:pd  hash: user key → entry JSON of its last client
  KEYS[8]  events           <prefix>:{T}:pe  stream of join/leave events (MAXLEN ~ 1000,
                                             expires 60 s after the last one)
  A user key groups a user's clients ("u:<subject>" for identified users, "c:<client id>"
  for anonymous ones); the entry JSON is {"client":…,"user":…,"info":…} as streamhub built
  it. An event is an entry of the events stream: epoch (or "" when the topic has none),
  after (the topic's top seq when it happened: it belongs after that message), kind
  (join | leave), entry. Every node's tail reads it with the messages, in one snapshot
  (sh_tail_read_v1), so subscribers get joins and leaves in order with the messages; a
  hint on the hint channel wakes the tails.
  A user's join is published when its first client arrives, its leave when its last one
  left and the grace period passed without another coming back (then neither is).
  Expired entries (not refreshed by their node: a node that died) and due leaves are
  purged by every call, at most PRESENCE_PURGE per kind and call.
]]

local function presence_keys(keys)
  return { meta = keys[1], hint = keys[2], clients = keys[3], expiry = keys[4], users = keys[5],
    leaving = keys[6], leaving_entries = keys[7], events = keys[8] }
end

-- Join and leave events kept per topic for the tails to read (they read within
-- milliseconds; a tail that falls this far behind misses the oldest).
local PRESENCE_EVENTS_KEPT = 1000
local PRESENCE_EVENTS_TTL_MS = 60000

-- Records a join or leave event, placed after the topic's current top seq, and wakes the
-- tails.
local function presence_event(pk, kind, entry)
  local m = redis.call('HMGET', pk.meta, 'epoch', 'seq')
  local epoch, top = m[1] or '', m[2] or '0'
  redis.call('XADD', pk.events, 'MAXLEN', '~', PRESENCE_EVENTS_KEPT, '*',
    'epoch', epoch, 'after', top, 'kind', kind, 'entry', entry)
  redis.call('PEXPIRE', pk.events, PRESENCE_EVENTS_TTL_MS)
  redis.call('SPUBLISH', pk.hint, (epoch ~= '' and epoch or '-') .. ' ' .. top)
end

-- "<n>:<user key><entry JSON>" → user key, entry JSON.
local function presence_split(value)
  local n, rest = string.match(value, '^(%d+):(.*)$')
  n = tonumber(n)
  return string.sub(rest, 1, n), string.sub(rest, n + 1)
end

-- Removes a client's entry; when it was its user's last client, the user's leave is due
-- `grace` ms from now. Returns 1 when the client was present.
local function presence_remove(pk, client, now, grace)
  redis.call('ZREM', pk.expiry, client)
  local value = redis.call('HGET', pk.clients, client)
  if not value then return 0 end
  redis.call('HDEL', pk.clients, client)
  local ukey, entry = presence_split(value)
  if redis.call('HINCRBY', pk.users, ukey, -1) <= 0 then
    redis.call('HDEL', pk.users, ukey)
    redis.call('ZADD', pk.leaving, now + grace, ukey)
    redis.call('HSET', pk.leaving_entries, ukey, entry)
  end
  return 1
end

local PRESENCE_PURGE = 1000

-- Entries whose node stopped refreshing them leave (with the grace period from now);
-- leaves that are due are published. Returns how many entries expired.
local function presence_purge(pk, now, grace)
  local expired = redis.call('ZRANGEBYSCORE', pk.expiry, '-inf', '(' .. now, 'LIMIT', 0, PRESENCE_PURGE)
  for _, client in ipairs(expired) do presence_remove(pk, client, now, grace) end
  local due = redis.call('ZRANGEBYSCORE', pk.leaving, '-inf', now, 'LIMIT', 0, PRESENCE_PURGE)
  for _, ukey in ipairs(due) do
    local entry = redis.call('HGET', pk.leaving_entries, ukey) or '{}'
    redis.call('ZREM', pk.leaving, ukey)
    redis.call('HDEL', pk.leaving_entries, ukey)
    presence_event(pk, 'leave', entry)
  end
  return #expired
end

--[[ sh_presence_upsert_v1 — add or refresh a node's clients on a topic.
  KEYS     the presence keys (above)
  ARGV[1]  now (ms), ARGV[2] deadline (ms: now + ttl), ARGV[3] grace (ms)
  ARGV[4…] per client, 3 values: client id, user key, entry JSON
  Returns  { clients added, entries that expired }
  A present client's expiry moves to the deadline; an absent one is added (its user's
  join is published unless the user is already present or came back within its grace).
]]
local function presence_upsert(keys, args)
  local pk = presence_keys(keys)
  local now, deadline, grace = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local expired = presence_purge(pk, now, grace)
  local added = 0
  for i = 4, #args, 3 do
    local client, ukey, entry = args[i], args[i + 1], args[i + 2]
    local present = redis.call('HEXISTS', pk.clients, client) == 1
    redis.call('ZADD', pk.expiry, deadline, client)
    if not present then
      redis.call('HSET', pk.clients, client, #ukey .. ':' .. ukey .. entry)
      added = added + 1
      if redis.call('HINCRBY', pk.users, ukey, 1) == 1 then
        if redis.call('ZREM', pk.leaving, ukey) == 1 then
          redis.call('HDEL', pk.leaving_entries, ukey)
        else
          presence_event(pk, 'join', entry)
        end
      end
    end
  end
  return { added, expired }
end

--[[ sh_presence_leave_v1 — remove clients from a topic.
  KEYS     the presence keys (above)
  ARGV[1]  now (ms), ARGV[2] grace (ms: 0 for an explicit unsubscribe)
  ARGV[3…] client ids
  Returns  { clients removed, entries that expired }
]]
local function presence_leave(keys, args)
  local pk = presence_keys(keys)
  local now, grace = tonumber(args[1]), tonumber(args[2])
  local removed = 0
  for i = 3, #args do removed = removed + presence_remove(pk, args[i], now, grace) end
  local expired = presence_purge(pk, now, grace)
  return { removed, expired }
end

--[[ sh_presence_list_v1 — who is present (purging what expired first).
  KEYS     the presence keys (above)
  ARGV[1]  now (ms), ARGV[2] grace (ms), ARGV[3] at most this many entries
  Returns  { clients present, users present, entry JSON, entry JSON, … }: clients are the
  connections present now; users and entries also count a user whose last client left
  less than the grace period ago (its leave is not published yet, so for anyone following
  the join and leave events it is still there), with its last client's entry.
]]
local function presence_list(keys, args)
  local pk = presence_keys(keys)
  local now, grace, limit = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  presence_purge(pk, now, grace)
  local out = { redis.call('ZCARD', pk.expiry), redis.call('HLEN', pk.users) + redis.call('ZCARD', pk.leaving) }
  if limit > 0 then
    local clients = redis.call('ZRANGE', pk.expiry, 0, limit - 1)
    if #clients > 0 then
      for _, value in ipairs(call_chunked({ 'HMGET', pk.clients }, clients)) do
        if value then
          local _, entry = presence_split(value)
          table.insert(out, entry)
        end
      end
    end
    local room = limit - (#out - 2)
    if room > 0 then
      local leaving = redis.call('ZRANGE', pk.leaving, 0, room - 1)
      if #leaving > 0 then
        for _, entry in ipairs(call_chunked({ 'HMGET', pk.leaving_entries }, leaving)) do
          if entry then table.insert(out, entry) end
        end
      end
    end
  end
  return out
end

redis.register_function('sh_presence_upsert_v1', presence_upsert)
redis.register_function('sh_presence_leave_v1', presence_leave)
redis.register_function('sh_presence_list_v1', presence_list)

--[[ User status. KEYS[1] sessions <prefix>:{u:<hash>}:us (zset: session id → ms it
  expires at), KEYS[2] info <prefix>:{u:<hash>}:ui (hash: user, last_seen, status).

  sh_user_upsert_v1 — add or refresh a node's sessions of a user.
  ARGV[1] user name, ARGV[2] deadline (ms), ARGV[3…] session ids. Returns the sessions count.
]]
local function user_upsert(keys, args)
  local deadline = tonumber(args[2])
  for i = 3, #args do redis.call('ZADD', keys[1], deadline, args[i]) end
  redis.call('HSET', keys[2], 'user', args[1])
  return redis.call('ZCARD', keys[1])
end

--[[ sh_user_remove_v1 — sessions of a user ended.
  ARGV[1] now (ms), ARGV[2…] session ids. When none is left, last_seen = now.
  Returns the sessions left.
]]
local function user_remove(keys, args)
  for i = 2, #args do redis.call('ZREM', keys[1], args[i]) end
  local left = redis.call('ZCARD', keys[1])
  if left == 0 then redis.call('HSET', keys[2], 'last_seen', args[1]) end
  return left
end

--[[ sh_user_status_v1 — a user's status, purging sessions whose node stopped refreshing.
  ARGV[1] now (ms), ARGV[2] ttl (ms), ARGV[3] grace (ms)
  Returns { online (0|1), sessions, last_seen (ms, 0 = never), status ('' = none) }:
  online while a session is present, or for `grace` after the last one ended. A session
  that expired was last seen when its node last refreshed it (its deadline − ttl).
]]
local function user_status(keys, args)
  local now, ttl, grace = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local expired = redis.call('ZRANGEBYSCORE', keys[1], '-inf', '(' .. now, 'WITHSCORES')
  if #expired > 0 then
    local latest = 0
    for i = 2, #expired, 2 do latest = math.max(latest, tonumber(expired[i])) end
    redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', '(' .. now)
    if redis.call('ZCARD', keys[1]) == 0 then
      local seen = tonumber(redis.call('HGET', keys[2], 'last_seen') or '0')
      redis.call('HSET', keys[2], 'last_seen', math.max(seen, latest - ttl))
    end
  end
  local sessions = redis.call('ZCARD', keys[1])
  local info = redis.call('HMGET', keys[2], 'last_seen', 'status')
  local last_seen = tonumber(info[1] or '0')
  local online = 0
  if sessions > 0 or (last_seen > 0 and now - last_seen < grace) then online = 1 end
  return { online, sessions, last_seen, info[2] or '' }
end

--[[ sh_user_set_status_v1 — ARGV[1] user name, ARGV[2] the status text ('' clears it). ]]
local function user_set_status(keys, args)
  redis.call('HSET', keys[2], 'user', args[1])
  if args[2] == '' then redis.call('HDEL', keys[2], 'status') else redis.call('HSET', keys[2], 'status', args[2]) end
  return 1
end

redis.register_function('sh_user_upsert_v1', user_upsert)
redis.register_function('sh_user_remove_v1', user_remove)
redis.register_function('sh_user_status_v1', user_status)
redis.register_function('sh_user_set_status_v1', user_set_status)
