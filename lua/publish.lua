
--[[ sh_publish_v4 — publish envelopes built by streamhub (single or batch), atomically:
  straight into the stream, or staged until the replicas confirmed them.
  (sh_publish_v3, below the header, is the same call with three values per message and
  four per result.)
  KEYS[1]  meta hash       <prefix>:{T}:m
  KEYS[2]  stream          <prefix>:{T}:s
  KEYS[3]  hint channel    <prefix>:{T}:h
  KEYS[4]  staging stream  <prefix>:{T}:x
  KEYS[5…] idempotency keys <prefix>:{T}:i:<key>, one per message that carries one
  ARGV[1]  retention max_len (0 = unbounded)
  ARGV[2]  idempotency window in ms
  ARGV[3]  n, the number of messages
  ARGV[4]  retention hard cap with consumer groups (0 = none)
  ARGV[5]  retention max_age in ms (0 = none)
  ARGV[6]  mode: "direct" or "stage"
  ARGV[7…] per message, 2 values: envelope (MessagePack), and "" when it has no
           idempotency key, else "<index into KEYS of its key> <message id>"
  Returns  flat array, 1 value per message in order: its seq (integer) when it was
           stored, or the idempotency record "<epoch> <seq> <id>" (string) of the
           message it repeats; then how many entries retention by age removed in this
           call; then the replication id of this primary and the topic's current epoch
           (the stored messages' epoch, and both for sh_commit_v1).
  Errors   "SH staging_full …" (stage: more than publish.max_staged seqs would wait);
           nothing is written when it is returned.
  direct:  durability "stored". Seqs still staged (left by a replicated publish) are
           committed first, as sh_commit_v1 does; then every message is appended to the
           stream, the meta written and one hint sent carrying the last seq.
  stage:   durability "replicated". The messages get the seqs after the last staged one
           and go to the staging stream, with their idempotency records; readers and
           consumer groups read only the stream, so nobody sees them yet. The meta is
           written even when every message was a duplicate, so that a WAIT sent after
           this call on the same connection covers the staged entries. No hint. The
           caller WAITs for the replicas, then calls sh_commit_v1.
  A new epoch starts when the meta was last written under another replication id
  (load_meta in lua/prelude.lua).

  sh_publish_v3 takes 3 values per message (envelope, message id, index into KEYS of its
  idempotency key or 0) and answers 4 per message (epoch, seq, duplicate 0|1, id); it
  stays registered for nodes of the previous release during a rolling upgrade.
  sh_publish_v2 is sh_publish_v3 without KEYS[4] and ARGV[6]; sh_publish_v1 is v2 without
  ARGV[5] (no age limit) and without the last value (per message from ARGV[5]). Both
  stay registered for callers of earlier releases; they publish "direct", except while
  the topic has staged seqs: then their messages queue behind those in the staging
  stream (marked r) and are committed right after them, to keep the seqs in order.
]]
-- A message's arguments: its envelope, message id (or nil) and index into KEYS of its
-- idempotency key (0 = none), in the layout of sh_publish_v4 (`compact`) or of v1–v3.
local function message_args(args, first, i, compact)
  if not compact then
    local at = first + i * 3
    return args[at], args[at + 1], tonumber(args[at + 2])
  end
  local at = first + i * 2
  local spec = args[at + 1]
  if spec == '' then return args[at], nil, 0 end
  local idem, id = string.match(spec, '^(%d+) (.+)$')
  return args[at], id, tonumber(idem)
end

local function publish_messages(keys, args, max_age, first, mode, staging, compact)
  local meta, stream, channel = keys[1], keys[2], keys[3]
  local max_len = tonumber(args[1])
  local window = tonumber(args[2])
  local n = tonumber(args[3])
  local hard_max = tonumber(args[4])
  local t = load_meta(meta, stream, staging)
  if mode == 'queue' then
    if t.staged > t.seq then mode = 'queued' else mode = 'direct' end
  end
  local staged = mode ~= 'direct'
  if staged and t.staged - t.seq + n > MAX_STAGED then
    return nil, 0, fail('staging_full', (t.staged - t.seq) .. ' seqs of this topic wait for replicas (publish.max_staged '
      .. MAX_STAGED .. ')')
  end
  local committed = t.seq
  local aged = 0
  if mode == 'direct' and t.staged > t.seq then
    aged = move_staged(t, meta, stream, staging, t.staged, max_len, hard_max, max_age)
  end
  local out = {}
  local wrote = t.seq > committed or mode == 'stage'
  for i = 0, n - 1 do
    local envelope, id, idem = message_args(args, first, i, compact)
    local dup_epoch, dup_seq, dup_id
    if idem > 0 then
      dup_epoch, dup_seq, dup_id = idem_lookup(keys[idem])
    end
    if dup_epoch and compact then
      table.insert(out, dup_epoch .. ' ' .. dup_seq .. ' ' .. dup_id)
    elseif dup_epoch then
      table.insert(out, dup_epoch); table.insert(out, dup_seq)
      table.insert(out, 1); table.insert(out, dup_id)
    else
      t.staged = t.staged + 1
      local seq = t.staged
      if mode == 'stage' then
        redis.call('XADD', staging, int(seq) .. '-0', 'e', envelope)
      elseif mode == 'queued' then
        redis.call('XADD', staging, int(seq) .. '-0', 'e', envelope, 'r', '1')
      else
        aged = aged + append(stream, meta, seq, envelope, max_len, hard_max, max_age, t.groups)
        t.seq = seq
      end
      wrote = true
      if idem > 0 then
        redis.call('SET', keys[idem], t.epoch .. ' ' .. int(seq) .. ' ' .. id, 'PX', int(window))
      end
      if compact then
        table.insert(out, seq)
      else
        table.insert(out, t.epoch); table.insert(out, seq)
        table.insert(out, 0); table.insert(out, id)
      end
    end
  end
  if wrote then
    commit_meta(meta, t)
  end
  if t.seq > committed then
    hint(channel, t.epoch, t.seq)
  end
  return out, aged, nil, t
end

local function publish_v1(keys, args)
  local out, _, err = publish_messages(keys, args, 0, 5, 'queue', staging_of(keys[1]))
  return err or out
end

local function publish_v2(keys, args)
  local out, aged, err = publish_messages(keys, args, tonumber(args[5]), 6, 'queue', staging_of(keys[1]))
  if err then return err end
  table.insert(out, aged)
  return out
end

local function publish_staged_or_direct(keys, args, compact)
  local mode = args[6]
  if mode ~= 'direct' and mode ~= 'stage' then
    return fail('invalid_request', 'ARGV[6] (mode) must be direct or stage')
  end
  -- KEYS[4] is the staging stream; idempotency indexes point into KEYS as they are.
  local out, aged, err, t = publish_messages(keys, args, tonumber(args[5]), 7, mode, keys[4], compact)
  if err then return err end
  table.insert(out, aged)
  table.insert(out, t.rid)
  table.insert(out, t.epoch)
  return out
end

local function publish_v3(keys, args)
  return publish_staged_or_direct(keys, args, false)
end

local function publish_v4(keys, args)
  return publish_staged_or_direct(keys, args, true)
end

redis.register_function('sh_publish_v1', publish_v1)
redis.register_function('sh_publish_v2', publish_v2)
redis.register_function('sh_publish_v3', publish_v3)
redis.register_function('sh_publish_v4', publish_v4)

--[[ sh_commit_v1 — make staged seqs readable once their replicas confirmed them.
  KEYS[1]  meta hash       <prefix>:{T}:m
  KEYS[2]  stream          <prefix>:{T}:s
  KEYS[3]  hint channel    <prefix>:{T}:h
  KEYS[4]  staging stream  <prefix>:{T}:x
  ARGV[1]  epoch, as returned by sh_publish_v4 (or v3)
  ARGV[2]  upto: commit every staged seq up to this one
  ARGV[3]  replication id, as returned by sh_publish_v4 (or v3)
  ARGV[4]  retention max_len, ARGV[5] hard cap, ARGV[6] max_age in ms (as sh_publish_v4)
  Returns  { committed top seq, entries retention by age removed }
  Errors   "SH failover …" when this primary is not the one that staged (another
           replication id: its replicas' confirmation says nothing about this one);
           "SH rolled_back …" when the topic's epoch changed or upto was never staged
           here. Nothing is written when one is returned.
  Moves the staged entries up to `upto` (and the ones queued right behind them by
  sh_publish_v1/v2/raw_v1) into the stream, in seq order, writes the meta's seq and
  sends one hint. Entries up to `upto` are confirmed by the replicas once the WAIT that
  followed a later staging call on the same primary succeeded (the replication stream
  is ordered), so any caller's confirmation commits everything before it too. Calling
  it again for seqs already committed changes nothing.
]]
local function commit(keys, args)
  local meta, stream, channel, staging = keys[1], keys[2], keys[3], keys[4]
  if replication_id() ~= args[3] then
    return fail('failover', 'the primary changed since these messages were staged')
  end
  local m = redis.call('HMGET', meta, 'epoch', 'seq', 'staged')
  local upto = tonumber(args[2])
  if m[1] ~= args[1] then
    return fail('rolled_back', 'the topic is in another epoch than the staged messages')
  end
  local t = { epoch = m[1], seq = tonumber(m[2]), staged = math.max(tonumber(m[2]), tonumber(m[3] or '0')) }
  if upto > t.staged then
    return fail('rolled_back', 'seq ' .. upto .. ' was never staged here')
  end
  local before = t.seq
  local aged = move_staged(t, meta, stream, staging, upto, tonumber(args[4]), tonumber(args[5]), tonumber(args[6]))
  if t.seq > before then
    redis.call('HSET', meta, 'seq', int(t.seq))
    hint(channel, t.epoch, t.seq)
  end
  return { t.seq, aged }
end

redis.register_function('sh_commit_v1', commit)
