"""The Lua scripts of the Redis store (:mod:`relay.store.redis`).

Every read-modify-write of the store is one script, so that it is atomic
across every replica; every script touches keys of one hash tag only, so
that it would run on Redis Cluster too. ``$GROUP`` stands for the consumer
group's name and is replaced when the scripts are registered.
"""

from __future__ import annotations

# shared by the queue scripts: create the consumer group on first use
# (reading from the start of the stream, so that jobs enqueued before the
# group existed are delivered); checked first so that a normal call does
# not leave an error reply in the server's error statistics
ENSURE_GROUP = """
local function ensure_group(queue, group)
  if redis.call('EXISTS', queue) == 1 then
    for _, info in ipairs(redis.call('XINFO', 'GROUPS', queue)) do
      if info[2] == group then return end
    end
  end
  redis.call('XGROUP', 'CREATE', queue, group, '0', 'MKSTREAM')
end
"""

# due retries go back to the stream in whichever script runs first once they
# are due (a lease, or an enqueue, which moves them ahead of the new job so
# that the stream stays in the order jobs became due); always inside a
# script, so that two replicas never both move one
MOVE_DUE = """
local function move_due(scheduled, queue, prefix, now, batch)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', scheduled, '-inf', now,
      'LIMIT', 0, batch)) do
    redis.call('ZREM', scheduled, id)
    if redis.call('HGET', prefix .. id, 'where') == 'scheduled' then
      local entry = redis.call('XADD', queue, '*', 'job', id)
      redis.call('HSET', prefix .. id, 'where', 'pending', 'entry', entry)
    end
  end
end
"""

# KEYS: key hash, job hash, queue, scheduled
# ARGV: now, firing, rule, severity, dedup expires_at, dedup ttl ms,
#       reopen expires_at, reopen ttl ms, job id, payload, dedup key,
#       job key prefix, batch
OBSERVE = (
    MOVE_DUE
    + """
local key, job, queue = KEYS[1], KEYS[2], KEYS[3]
local now = tonumber(ARGV[1])
local cur = redis.call('HMGET', key, 'state', 'expires_at', 'ticket_id',
  'last_seen')
local state = cur[1]
local live = state and tonumber(cur[2]) > now
local decision, job_id = 'ignored', ''

-- a sighting from a replica whose clock lags never moves times backwards
local function later(field, old, new)
  if tonumber(new) > tonumber(old) then redis.call('HSET', key, field, new) end
end

if ARGV[2] == '1' then
  if not live and ARGV[10] == '' then
    -- a probe without the job: most sightings are duplicates, so the job is
    -- only sent (in a second, fully atomic call) when it is needed
    return {'need_job', '', {}}
  end
  if not live then
    redis.call('DEL', key)
    redis.call('HSET', key, 'state', 'pending', 'first_seen', ARGV[1],
      'last_seen', ARGV[1], 'expires_at', ARGV[5], 'count', 1,
      'rule', ARGV[3], 'severity', ARGV[4])
    move_due(KEYS[4], queue, ARGV[12], ARGV[1], tonumber(ARGV[13]))
    local entry = redis.call('XADD', queue, '*', 'job', ARGV[9])
    redis.call('HSET', job, 'id', ARGV[9], 'key', ARGV[11],
      'payload', ARGV[10], 'attempts', 0, 'enqueued_at', ARGV[1],
      'next_at', ARGV[1], 'where', 'pending', 'entry', entry, 'token', 0)
    decision, job_id = 'queued', ARGV[9]
  else
    if state == 'resolved' then
      -- the problem is back inside the reopen window
      redis.call('HSET', key, 'state', cur[3] and 'open' or 'pending',
        'expires_at', ARGV[5])
    else
      later('expires_at', cur[2], ARGV[5])
    end
    later('last_seen', cur[4], ARGV[1])
    redis.call('HINCRBY', key, 'count', 1)
    decision = 'duplicate'
  end
  if redis.call('PTTL', key) < tonumber(ARGV[6]) then
    redis.call('PEXPIRE', key, ARGV[6])
  end
elseif live and state ~= 'resolved' then
  redis.call('HSET', key, 'state', 'resolved', 'expires_at', ARGV[7])
  later('last_seen', cur[4], ARGV[1])
  redis.call('PEXPIRE', key, ARGV[8])
  decision = 'resolved'
end

local after = {}
if decision ~= 'ignored' or live then after = redis.call('HGETALL', key) end
return {decision, job_id, after}
"""
)

# KEYS: key hash; ARGV: ticket id, url ('' for none)
ATTACH = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
redis.call('HSET', KEYS[1], 'ticket_id', ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'ticket_url', ARGV[2])
else
  redis.call('HDEL', KEYS[1], 'ticket_url')
end
if state == 'pending' then redis.call('HSET', KEYS[1], 'state', 'open') end
return 1
"""

# KEYS: queue, leases, scheduled
# ARGV: consumer, now, lease deadline, count, job key prefix, batch
LEASE = (
    ENSURE_GROUP
    + MOVE_DUE
    + """
local queue, leases, scheduled = KEYS[1], KEYS[2], KEYS[3]
local consumer, now, deadline = ARGV[1], ARGV[2], ARGV[3]
local count, prefix = tonumber(ARGV[4]), ARGV[5]
local group = '$GROUP'
ensure_group(queue, group)

move_due(scheduled, queue, prefix, now, tonumber(ARGV[6]))

local out = {}
local function take(entry, id)
  local job = prefix .. id
  if redis.call('HGET', job, 'entry') ~= entry then
    -- purged meanwhile: drop the orphan entry
    redis.call('XACK', queue, group, entry)
    redis.call('XDEL', queue, entry)
    redis.call('ZREM', leases, entry)
    return
  end
  redis.call('ZADD', leases, deadline, entry)
  local token = redis.call('HINCRBY', job, 'token', 1)
  redis.call('HSET', job, 'consumer', consumer)
  out[#out + 1] = {entry, token, redis.call('HGETALL', job)}
end

-- leases that ran out: a crashed or stuck worker's jobs
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now,
    'LIMIT', 0, count)) do
  local claimed = redis.call('XCLAIM', queue, group, consumer, 0, entry)
  if claimed[1] and claimed[1][2] then
    take(entry, claimed[1][2][2])
  else
    redis.call('ZREM', leases, entry)
  end
end

if #out < count then
  local read = redis.call('XREADGROUP', 'GROUP', group, consumer,
    'COUNT', count - #out, 'STREAMS', queue, '>')
  if read then
    for _, e in ipairs(read[1][2]) do take(e[1], e[2][2]) end
  end
end
return out
"""
)

# KEYS: queue, leases, job hash, scheduled, dead
# ARGV: action (ack/retry/dead), entry, token, now or due time, error,
#       payload ('' to keep), job id
RELEASE = """
local queue, leases, job = KEYS[1], KEYS[2], KEYS[3]
local cur = redis.call('HMGET', job, 'where', 'entry', 'token')
if cur[1] ~= 'pending' or cur[2] ~= ARGV[2] or cur[3] ~= ARGV[3] then
  return 0
end
redis.call('XACK', queue, '$GROUP', ARGV[2])
redis.call('XDEL', queue, ARGV[2])
redis.call('ZREM', leases, ARGV[2])
if ARGV[1] == 'ack' then
  redis.call('DEL', job)
  return 1
end

redis.call('HINCRBY', job, 'attempts', 1)
redis.call('HSET', job, 'last_error', ARGV[5], 'consumer', '')
if ARGV[1] == 'retry' then
  if ARGV[6] ~= '' then redis.call('HSET', job, 'payload', ARGV[6]) end
  redis.call('HSET', job, 'where', 'scheduled', 'entry', '', 'next_at', ARGV[4])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[7])
else
  local entry = redis.call('XADD', KEYS[5], '*', 'job', ARGV[7])
  redis.call('HSET', job, 'where', 'dead', 'entry', entry, 'dead_at', ARGV[4])
end
return 1
"""

# KEYS: queue, scheduled, dead; ARGV: queue name, limit, job key prefix
LIST = """
local name, limit, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local ids = {}
if name == 'scheduled' then
  ids = redis.call('ZRANGE', KEYS[2], 0, limit - 1)
else
  local stream = name == 'dead' and KEYS[3] or KEYS[1]
  for _, e in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', limit)) do
    ids[#ids + 1] = e[2][2]
  end
end
local out = {}
for _, id in ipairs(ids) do
  local fields = redis.call('HGETALL', prefix .. id)
  if #fields > 0 then out[#out + 1] = fields end
end
return out
"""

# KEYS: dead, queue; ARGV: now, job key prefix, job id ('' for a batch), batch
REQUEUE = """
local dead, queue, now, prefix = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local function requeue(id, entry)
  redis.call('XDEL', dead, entry)
  local job = prefix .. id
  if redis.call('HGET', job, 'where') ~= 'dead' then return 0 end
  local fresh = redis.call('XADD', queue, '*', 'job', id)
  redis.call('HSET', job, 'where', 'pending', 'entry', fresh,
    'enqueued_at', now, 'next_at', now, 'attempts', 0)
  redis.call('HDEL', job, 'dead_at')
  return 1
end

if ARGV[3] ~= '' then
  local cur = redis.call('HMGET', prefix .. ARGV[3], 'where', 'entry')
  if cur[1] ~= 'dead' then return {0, 0} end
  return {requeue(ARGV[3], cur[2]), 0}
end
local moved, seen = 0, 0
for _, e in ipairs(redis.call('XRANGE', dead, '-', '+', 'COUNT', ARGV[4])) do
  moved = moved + requeue(e[2][2], e[1])
  seen = seen + 1
end
return {moved, seen}
"""

# KEYS: queue, leases, scheduled, dead; ARGV: queue name, job key prefix, batch
PURGE = (
    ENSURE_GROUP
    + """
local queue, leases, scheduled, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local name, prefix, batch = ARGV[1], ARGV[2], tonumber(ARGV[3])
local deleted, seen = 0, 0
if name == 'scheduled' then
  for _, id in ipairs(redis.call('ZRANGE', scheduled, 0, batch - 1)) do
    redis.call('ZREM', scheduled, id)
    deleted = deleted + redis.call('DEL', prefix .. id)
    seen = seen + 1
  end
  return {deleted, seen}
end

local stream = name == 'dead' and dead or queue
if name == 'pending' then ensure_group(queue, '$GROUP') end
for _, e in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', batch)) do
  redis.call('XDEL', stream, e[1])
  if name == 'pending' then
    redis.call('XACK', queue, '$GROUP', e[1])
    redis.call('ZREM', leases, e[1])
  end
  if redis.call('HGET', prefix .. e[2][2], 'entry') == e[1] then
    deleted = deleted + redis.call('DEL', prefix .. e[2][2])
  end
  seen = seen + 1
end
return {deleted, seen}
"""
)

# KEYS: queue, leases, scheduled, dead; ARGV: now, job key prefix
# returns pending, scheduled, dead, leased and the earliest time a job that
# is due now became due ('' when none is)
STATS = """
local queue, leases, scheduled, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, prefix = tonumber(ARGV[1]), ARGV[2]
local after = '-'
if redis.call('EXISTS', queue) == 1 then
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', queue)) do
    if info[2] == '$GROUP' then
      for i = 1, #info, 2 do
        if info[i] == 'last-delivered-id' then after = '(' .. info[i + 1] end
      end
    end
  end
end
-- the group's pending entries whose lease still runs (every entry of the
-- pending entries list has a deadline here; a lapsed one is due again)
local leased = redis.call('ZCOUNT', leases, '(' .. ARGV[1], '+inf')

-- the raw text is returned, not the Lua number, which would lose digits
local oldest, oldest_text = nil, ''
local function consider(text)
  local at = tonumber(text)
  if at and at <= now and (oldest == nil or at < oldest) then
    oldest, oldest_text = at, text
  end
end
-- the first entry the group has not delivered yet
local first = redis.call('XRANGE', queue, after, '+', 'COUNT', 1)
if first[1] then consider(redis.call('HGET', prefix .. first[1][2][2], 'next_at')) end
-- a lease that ran out (its job has been due since the deadline)
local lapsed = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
if lapsed[2] then consider(lapsed[2]) end
-- a retry whose time has come
local due = redis.call('ZRANGE', scheduled, 0, 0, 'WITHSCORES')
if due[2] then consider(due[2]) end

return {redis.call('XLEN', queue), redis.call('ZCARD', scheduled),
  redis.call('XLEN', dead), leased, oldest_text}
"""

# KEYS: queue; ARGV: idle ms
# atomic, because a consumer that leases a job between a check and its
# removal would take the job's pending entry with it
PRUNE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], '$GROUP')
if consumers.err then return 0 end
local removed = 0
for _, info in ipairs(consumers) do
  local f = {}
  for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
  if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[1]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], '$GROUP', f['name'])
    removed = removed + 1
  end
end
return removed
"""

# KEYS: budget zset; ARGV: now, window start, limit, member, ttl ms
# a sliding window of the last minute, shared by every replica; returns ''
# when a slot was taken, else the time of the oldest call in the window
BUDGET = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return ''
end
return redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
"""
