"""The Redis broker's Lua scripts: every multi-step change to a queue is one atomic script.

Keys of one queue (all in one Cluster hash slot, thanks to the `{queue}` hash tag):

    <prefix>:{<queue>}:p9 ... :p0   one stream per priority level, each with the group "aqueue"
    <prefix>:{<queue>}:delayed      sorted set of messages not due yet, scored by due time
    <prefix>:{<queue>}:wake         stream that wakes one idle consumer when an earlier delayed
                                    message arrives, so it can shorten its sleep
    <prefix>:{<queue>}:dead         the dead-letter stream (fields b, r reason, d detail, t time)
    <prefix>:{<queue>}:dead:info    the bytes it keeps and the letters dropped (see `bury`)
    <prefix>:{<queue>}:beats        hash: the owner (broker) of each consumer of the queue ->
                                    its last heartbeat, in Redis's own time (ms, `TIME`)
    <prefix>:{<queue>}:procs        hash: the owner -> its process (`aqueue.drivers.liveness`)

A stream entry has the fields `b` (the message body) and `n` (deliveries before this entry was
added: a message given back with a delay is added again, and keeps its count). A delayed member
is `<priority>:<n>:<nonce>:<body>`. Nothing stops a client writing something else there: an
entry without a body or with a count that is not 1 to 9 digits, and a delayed member of
another shape, are dead-lettered as `undecodable`, saying what is wrong, as they are read.

A consumer is named `<owner>:<nonce>`, its owner being the broker that made it, whose heartbeat
thread writes `beats` (`BEAT`). An owner whose beat is older than the heartbeat timeout is
dead: the claim script of any live, judging consumer takes the entries its consumers held
(`XCLAIM`, which counts a delivery, as `XAUTOCLAIM` does), and removes the owner's beat once
none is left. Times are Redis's, so the workers' clocks never matter. An owner on the same
machine (and pid namespace) whose process is gone is dead at once: each heartbeat reads the
queue's `procs`, and `GONE` makes such an owner's beat stale and wakes a consumer.

A delivery is fenced by (consumer, delivery counter of its pending entry): `XAUTOCLAIM` bumps the
counter and changes the owner, so a settle from a consumer whose lease ran out changes nothing.

A message given back at once (`REQUEUE` without a delay: a shutdown, claimed ahead and not
started, `nack`) keeps its place: its pending entry goes to the pseudo-consumer `returned`
(no colon: never a real consumer, never judged), with its counter set so that the next claim
(`XCLAIM`, which adds one) counts the delivery (`nack`) or not (`release`). The claim script
takes a level's returned entries, oldest first, before its new ones; before, a message given
back was added again at the tail, behind the whole backlog (issue 19: 87 s to run again
with 1,000 tasks queued). A wake-up on the queue's `wake` stream tells an idle consumer.
"""

from __future__ import annotations

from ..base import DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_COUNT

__all__ = [
    "ACK",
    "BEAT",
    "CLAIM",
    "DEAD_LETTER",
    "GONE",
    "PURGE",
    "PURGE_DEAD",
    "QUEUE_STATS",
    "REQUEUE",
    "SCHEDULE",
    "TAKE_DEAD",
]

#: Helpers shared by the scripts (prepended to each).
_COMMON = """
-- The body and delivery count of a stream entry, and what is wrong with it (nil: nothing).
-- Anyone can XADD anything: a count must be 1 to 9 decimal digits, and a body must be there.
local function fields_of(entry)
  local f = entry[2]
  if type(f) ~= 'table' then return nil, 0, 'stream entry has no fields' end
  local body, n, problem = nil, 0, nil
  for i = 1, #f, 2 do
    local v = f[i + 1]
    if f[i] == 'b' then
      body = v
    elseif f[i] == 'n' then
      if type(v) == 'string' and #v <= 9 and string.match(v, '^%d+$') then
        n = tonumber(v)
      else
        problem = "stream entry field n is '" .. string.sub(tostring(v), 1, 40) ..
          "', not a delivery count"
      end
    end
  end
  if body == nil and problem == nil then problem = 'stream entry has no body (field b)' end
  return body, n, problem
end

-- The pending entry `id`, if `consumer` still owns it with delivery counter `count`.
local function owned(key, group, id, consumer, count)
  local ok, pend = pcall(redis.call, 'XPENDING', key, group, id, id, 1)
  if not ok then return nil end
  local e = pend[1]
  if not e or e[2] ~= consumer then return nil end
  if count ~= nil and tonumber(e[4]) ~= count then return nil end
  return e
end

-- The bytes a dead letter counts for (`DeadLetter.size`): its body, reason and detail.
local function dead_size(entry)
  local f, size = entry[2], 0
  for i = 1, #f, 2 do
    if f[i] == 'b' or f[i] == 'r' or f[i] == 'd' then size = size + #f[i + 1] end
  end
  return size
end

-- The cap of the dead letters of the queues a script serves: the caller's (its ARGV).
local dead_cap = nil

-- Add a dead letter, then drop the oldest while the stream holds more bytes than the cap or
-- more entries than MAX_COUNT (the newest stays). The hash <dead>:info (same hash slot)
-- counts the bytes kept and the letters dropped.
local function bury(dead, body, reason, detail, now)
  local info = dead .. ':info'
  if redis.call('HEXISTS', info, 'bytes') == 0 then
    -- Dead letters an older aqueue kept, uncounted: count them once.
    local total, from = 0, '-'
    while true do
      local page = redis.call('XRANGE', dead, from, '+', 'COUNT', 16)
      if #page == 0 then break end
      for _, e in ipairs(page) do total = total + dead_size(e) end
      from = '(' .. page[#page][1]
    end
    redis.call('HSET', info, 'bytes', total)
  end
  redis.call('XADD', dead, '*', 'b', body, 'r', reason, 'd', detail, 't', now)
  local total = redis.call('HINCRBY', info, 'bytes', #body + #reason + #detail)
  local cap = dead_cap or MAX_BYTES
  local kept, freed, dropped = redis.call('XLEN', dead), 0, 0
  while kept > 1 and (total - freed > cap or kept > MAX_COUNT) do
    -- One at a time: an entry read is copied whole (a body may be a megabyte).
    local e = redis.call('XRANGE', dead, '-', '+', 'COUNT', 1)[1]
    if not e then break end
    redis.call('XDEL', dead, e[1])
    freed, kept, dropped = freed + dead_size(e), kept - 1, dropped + 1
  end
  if dropped > 0 then
    redis.call('HINCRBY', info, 'bytes', -freed)
    redis.call('HINCRBY', info, 'dropped', dropped)
  end
end

-- Add a delayed member; wake one idle consumer if it is now the earliest.
local function schedule(delayed, wake, due, member)
  local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  redis.call('ZADD', delayed, due, member)
  if first[2] == nil or tonumber(due) < tonumber(first[2]) then
    redis.call('XADD', wake, 'MAXLEN', '~', 16, '*', 'w', '1')
  end
end

-- The pseudo-consumer that holds the pending entries of messages given back (see the module).
local RETURNED = 'returned'
""".replace("MAX_BYTES", str(DEAD_LETTER_MAX_BYTES)).replace(
    "MAX_COUNT", str(DEAD_LETTER_MAX_COUNT)
)

#: Claim up to `limit` messages of several queues: due delayed messages first move to their
#: streams; then (when asked) leases that ran out are reclaimed; then, priority 9 first, the
#: level's returned entries (given back, see the module), then its fresh entries, oldest first
#: across queues. Messages delivered more
#: than `max_deliveries` times (the broker passes a backstop: runs are counted apart) are
#: dead-lettered on the way.
#: With `judge`, the entries held by consumers of dead owners (see the module) are taken first.
#: Entries of dead owners and run-out leases are redeliveries, which a worker runs one at a
#: time (`aqueue.worker.isolation`): a claim takes at most `orphans` of them (the consumer
#: passes 1, or 0 while its worker holds one), so that they spread over the live workers and
#: run side by side there. Taking every one a worker had room for, they piled up in the worker
#: that claimed first and ran one after the other (issue 19: the last orphan of a kill -9 done
#: 15.3 s after it, 8 of them in one worker).
#: KEYS: per queue, 12 keys: p9..p0, delayed, dead; then the `beats` hash of each queue.
#: ARGV: group, consumer, limit, now, max_deliveries, reclaim (0/1), min_idle_ms, stale_ms,
#: dead_letter_max_bytes, judge (0/1/2: see `gone_only`), owner, heartbeat_timeout_ms,
#: orphans (default: limit).
#: Returns {{queue_index, priority, id, body, n, counter}...}, buried, next_due or false,
#: the ms until another owner's beat goes stale or false (when judging), and how many entries
#: of how many dead owners it took, and how many dead owners still hold some.
CLAIM = (
    _COMMON
    + """
local group, consumer = ARGV[1], ARGV[2]
local remaining = tonumber(ARGV[3])
local now, max_deliveries = ARGV[4], tonumber(ARGV[5])
local reclaim, min_idle, stale = ARGV[6] == '1', ARGV[7], tonumber(ARGV[8])
dead_cap = tonumber(ARGV[9])
local nq = #KEYS / 13
local out, buried = {}, 0
-- Judge: '1' every owner by its beat; '2' (a consumer whose own beats are not proven yet)
-- only the owners whose process is gone (`GONE` set their beat to 0); '0' nobody.
local judge, owner, hb_timeout = ARGV[10] ~= '0', ARGV[11], tonumber(ARGV[12])
local gone_only = ARGV[10] == '2'
-- How many entries this claim may take from dead owners and run-out leases (see CLAIM).
local orphans = math.min(remaining, tonumber(ARGV[13] or remaining))
local next_check, reclaimed, robbed, unjudged = false, 0, {}, 0

local function stream(q, p) return KEYS[(q - 1) * 12 + 10 - p] end

local function ensure_group(key)
  redis.pcall('XGROUP', 'CREATE', key, group, '0', 'MKSTREAM')
end

local function promote(q)
  local delayed = KEYS[(q - 1) * 12 + 11]
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
  for _, member in ipairs(due) do
    local p, n, pos = string.match(member, '^(%d):(%d%d?%d?%d?%d?%d?%d?%d?%d?):[^:]*:()')
    if p then
      redis.call('XADD', stream(q, tonumber(p)), '*', 'b', string.sub(member, pos), 'n', n)
    else
      bury(KEYS[q * 12], member, 'undecodable',
        'delayed member is not <priority>:<deliveries>:<nonce>:<body>', now)
      buried = buried + 1
    end
    redis.call('ZREM', delayed, member)
  end
end

-- Keep a claimed entry, or dead-letter it once it has been delivered too often.
-- Set while taking returned entries: they go before the worker's queued messages.
local returning = false

local function take(q, p, key, entry, counter)
  local body, n, problem = fields_of(entry)
  if problem then
    bury(KEYS[q * 12], body or '', 'undecodable', problem, now)
    redis.call('XACK', key, group, entry[1])
    redis.call('XDEL', key, entry[1])
    buried = buried + 1
    return
  end
  if n + counter > max_deliveries then
    bury(KEYS[q * 12], body or '', 'max-deliveries',
      'delivered ' .. (n + counter - 1) .. ' times without a recorded start', now)
    redis.call('XACK', key, group, entry[1])
    redis.call('XDEL', key, entry[1])
    buried = buried + 1
    return
  end
  out[#out + 1] = {q, p, entry[1], body or '', n, counter, returning and 1 or 0}
  remaining = remaining - 1
end

local function forget_stale(key)
  local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', key, group)
  if not ok then return end
  for _, c in ipairs(consumers) do
    local name, pending, idle
    for i = 1, #c, 2 do
      if c[i] == 'name' then name = c[i + 1]
      elseif c[i] == 'pending' then pending = c[i + 1]
      elseif c[i] == 'idle' then idle = c[i + 1] end
    end
    if pending == 0 and idle > stale and name ~= consumer then
      redis.call('XGROUP', 'DELCONSUMER', key, group, name)
    end
  end
end

local function reclaim_stream(q, p)
  local key = stream(q, p)
  local cursor = '0-0'
  for _ = 1, 10 do
    if remaining <= 0 then return end
    if orphans <= 0 then break end
    local res = redis.pcall('XAUTOCLAIM', key, group, consumer, min_idle, cursor,
      'COUNT', math.min(remaining, orphans))
    if type(res) ~= 'table' or res.err then return end
    cursor = res[1]
    for _, entry in ipairs(res[2]) do
      local e = redis.call('XPENDING', key, group, entry[1], entry[1], 1)[1]
      take(q, p, key, entry, tonumber(e[4]))
      orphans = orphans - 1
    end
    if cursor == '0-0' then break end
  end
  forget_stale(key)
end

local function read(key, count)
  local res = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
    'STREAMS', key, '>')
  if type(res) == 'table' and res.err then
    ensure_group(key)
    res = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
      'STREAMS', key, '>')
  end
  if not res then return {} end
  return res[1][2]
end

local function last_delivered(key)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
  if ok then
    for _, g in ipairs(groups) do
      local name, last
      for i = 1, #g, 2 do
        if g[i] == 'name' then name = g[i + 1]
        elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
      end
      if name == group then return last end
    end
  end
  ensure_group(key)
  return '0-0'
end

local function id_less(a, b)
  local ams, aseq = string.match(a[2], '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b[2], '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams < bms end
  aseq, bseq = tonumber(aseq), tonumber(bseq)
  if aseq ~= bseq then return aseq < bseq end
  return a[1] < b[1]
end

-- One priority level of several queues: peek at each, then read the oldest across them.
local function read_level(p)
  if nq == 1 then
    for _, entry in ipairs(read(stream(1, p), remaining)) do take(1, p, stream(1, p), entry, 1) end
    return
  end
  local seen = {}
  for q = 1, nq do
    local key = stream(q, p)
    if redis.call('EXISTS', key) == 1 then
      local last = last_delivered(key)
      for _, e in ipairs(redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', remaining)) do
        seen[#seen + 1] = {q, e[1]}
      end
    end
  end
  if #seen == 0 then return end
  table.sort(seen, id_less)
  local per = {}
  for i = 1, math.min(#seen, remaining) do per[seen[i][1]] = (per[seen[i][1]] or 0) + 1 end
  local got = {}
  for q, count in pairs(per) do
    for _, entry in ipairs(read(stream(q, p), count)) do got[#got + 1] = {q, entry} end
  end
  table.sort(got, function(a, b) return id_less({a[1], a[2][1]}, {b[1], b[2][1]}) end)
  for _, item in ipairs(got) do take(item[1], p, stream(item[1], p), item[2], 1) end
end

-- Take the entries given back to one stream (held by RETURNED), oldest first.
local function take_returned(q, p)
  if remaining <= 0 then return end
  local key = stream(q, p)
  local ok, pend = pcall(redis.call, 'XPENDING', key, group, '-', '+', remaining, RETURNED)
  if not ok or type(pend) ~= 'table' or #pend == 0 then return end
  local ids = {}
  for _, e in ipairs(pend) do ids[#ids + 1] = e[1] end
  returning = true
  for _, entry in ipairs(redis.call('XCLAIM', key, group, consumer, 0, unpack(ids))) do
    if entry then
      local e = redis.call('XPENDING', key, group, entry[1], entry[1], 1)[1]
      take(q, p, key, entry, tonumber(e[4]))
    end
  end
  returning = false
end

-- The owners in a queue's beats whose last beat is older than the timeout (Redis time, ms).
local function dead_in(beats, now_ms)
  local ok, flat = pcall(redis.call, 'HGETALL', beats)
  local dead, any = {}, false
  if not ok then return dead, any end  -- not a hash: nobody is judged by it
  for i = 1, #flat, 2 do
    local who, beat = flat[i], tonumber(flat[i + 1])
    if who ~= owner then
      if gone_only then
        if beat == 0 then dead[who], any = true, true end
      elseif beat == nil or beat < now_ms - hb_timeout then
        dead[who], any = true, true
      else
        local check = beat + hb_timeout - now_ms
        if not next_check or check < next_check then next_check = check end
      end
    end
  end
  return dead, any
end

-- Take the entries of one stream that consumers of dead owners hold; note owners left with some.
local function take_from_dead(q, p, dead, left)
  local key = stream(q, p)
  local ok, summary = pcall(redis.call, 'XPENDING', key, group)
  if not ok or type(summary[4]) ~= 'table' then return end
  for _, c in ipairs(summary[4]) do
    local who = string.match(c[1], '^(.*):[^:]*$')
    if who and dead[who] then
      local pend = {}
      local budget = math.min(remaining, orphans)
      if budget > 0 then
        pend = redis.call('XPENDING', key, group, '-', '+', budget, c[1])
      end
      if #pend < tonumber(c[2]) then left[who] = true end
      local ids = {}
      for _, e in ipairs(pend) do ids[#ids + 1] = e[1] end
      if #ids > 0 then
        robbed[who] = true
        for _, entry in ipairs(redis.call('XCLAIM', key, group, consumer, 0, unpack(ids))) do
          local e = redis.call('XPENDING', key, group, entry[1], entry[1], 1)[1]
          take(q, p, key, entry, tonumber(e[4]))
          reclaimed = reclaimed + 1
          orphans = orphans - 1
        end
      end
    end
  end
end

local function judge_queue(q, now_ms)
  local beats = KEYS[nq * 12 + q]
  local dead, any = dead_in(beats, now_ms)
  if not any then return end
  local left = {}
  for p = 9, 0, -1 do take_from_dead(q, p, dead, left) end
  for who in pairs(dead) do
    if left[who] then unjudged = unjudged + 1 else redis.call('HDEL', beats, who) end
  end
end

for q = 1, nq do promote(q) end
if judge then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for q = 1, nq do judge_queue(q, now_ms) end
end
if reclaim then
  for p = 9, 0, -1 do
    for q = 1, nq do reclaim_stream(q, p) end
  end
end
for p = 9, 0, -1 do
  if remaining <= 0 then break end
  for q = 1, nq do take_returned(q, p) end
  if remaining <= 0 then break end
  read_level(p)
end
local next_due = false
for q = 1, nq do
  local first = redis.call('ZRANGE', KEYS[(q - 1) * 12 + 11], 0, 0, 'WITHSCORES')
  if first[2] and (not next_due or tonumber(first[2]) < tonumber(next_due)) then
    next_due = first[2]
  end
end
local dead_owners = 0
for _ in pairs(robbed) do dead_owners = dead_owners + 1 end
return {out, buried, next_due, next_check, {reclaimed, dead_owners, unjudged}}
"""
)

#: Record a heartbeat of `owner` in a queue's beats hash, in Redis's time (ms), and its
#: process (`aqueue.drivers.liveness`: "place<TAB>pid<TAB>started", '' if unknown) in the
#: queue's procs hash; return the procs hash, flat, without the entries of owners with no beat
#: left (their leases were taken: those are deleted), for the caller to judge.
#: KEYS: beats, procs. ARGV: owner, forget (0/1), process.
BEAT = """
if ARGV[2] == '1' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ms)
if ARGV[3] == '' then return {} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local ok, flat = pcall(redis.call, 'HGETALL', KEYS[2])
if not ok then return {} end
local out = {}
for i = 1, #flat, 2 do
  if redis.call('HEXISTS', KEYS[1], flat[i]) == 1 then
    out[#out + 1] = flat[i]
    out[#out + 1] = flat[i + 1]
  else
    redis.call('HDEL', KEYS[2], flat[i])
  end
end
return out
"""

#: An owner's process is gone: make its beat stale (0) so that the next judging claim takes
#: what its consumers held, and wake an idle consumer of the queue to make that claim.
#: KEYS: beats, procs, wake. ARGV: owner. Returns 1 if the owner still had a beat.
GONE = """
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 0)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 16, '*', 'w', '1')
return 1
"""

#: Acknowledge (XACK + XDEL) or renew (XCLAIM JUSTID: resets the idle time, not the counter)
#: deliveries of one stream that their consumer still owns.
#: KEYS: the stream. ARGV: group, mode ('ack' | 'renew'), consumer, and the deliveries as one
#: string "id/counter,id/counter..." (one argument, not two per delivery: packing arguments
#: was a sixth of a busy worker's time). Returns a string of '1' (done) or '0' (fenced off),
#: one character per delivery.
ACK = (
    _COMMON
    + """
local key, group, mode, consumer = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local out, ids = {}, {}
for id, counter in string.gmatch(ARGV[4], '([^,/]+)/(%d+)') do
  if owned(key, group, id, consumer, tonumber(counter)) then
    ids[#ids + 1] = id
    out[#out + 1] = '1'
  else
    out[#out + 1] = '0'
  end
end
if #ids > 0 then
  if mode == 'ack' then
    redis.call('XACK', key, group, unpack(ids))
    redis.call('XDEL', key, unpack(ids))
  else
    ids[#ids + 1] = 'JUSTID'  -- keeps the delivery counter: the fence
    redis.call('XCLAIM', key, group, consumer, 0, unpack(ids))
  end
end
return table.concat(out)
"""
)

#: Give a delivery back: now, in its place (its pending entry to RETURNED, see the module),
#: or to the delayed set (a new member; the old entry is dropped).
#: KEYS: stream, delayed, wake. ARGV: group, consumer, id, counter ('' = any), mode ('nack'
#: counts the delivery, 'release' does not), due (0 = now), nonce, priority.
REQUEUE = (
    _COMMON
    + """
local key, group, id = KEYS[1], ARGV[1], ARGV[3]
local e = owned(key, group, id, ARGV[2], tonumber(ARGV[4]))
if not e then return 0 end
if tonumber(ARGV[6]) <= 0 then
  local count = tonumber(e[4])
  if ARGV[5] == 'release' then count = count - 1 end
  if count < 0 then count = 0 end
  redis.call('XCLAIM', key, group, RETURNED, 0, id, 'RETRYCOUNT', count, 'JUSTID')
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 16, '*', 'w', '1')
  return 1
end
local entries = redis.call('XRANGE', key, id, id)
redis.call('XACK', key, group, id)
redis.call('XDEL', key, id)
if not entries[1] then return 1 end
local body, n = fields_of(entries[1])
if not body then return 1 end
n = n + tonumber(e[4])
if ARGV[5] == 'release' then n = n - 1 end
schedule(KEYS[2], KEYS[3], ARGV[6], ARGV[8] .. ':' .. n .. ':' .. ARGV[7] .. ':' .. body)
return 1
"""
)

#: Move a delivery to the dead-letter stream with its reason, under the caller's cap.
#: KEYS: stream, dead. ARGV: group, consumer, id, counter, reason, detail, now, cap.
DEAD_LETTER = (
    _COMMON
    + """
local key, group, id = KEYS[1], ARGV[1], ARGV[3]
if not owned(key, group, id, ARGV[2], tonumber(ARGV[4])) then return 0 end
local entries = redis.call('XRANGE', key, id, id)
local body = ''
if entries[1] then body = fields_of(entries[1]) or '' end
dead_cap = tonumber(ARGV[8])
bury(KEYS[2], body, ARGV[5], ARGV[6], ARGV[7])
redis.call('XACK', key, group, id)
redis.call('XDEL', key, id)
return 1
"""
)

#: Add delayed messages. KEYS: delayed, wake. ARGV: due, member, due, member...
SCHEDULE = (
    _COMMON
    + """
for i = 1, #ARGV, 2 do schedule(KEYS[1], KEYS[2], ARGV[i], ARGV[i + 1]) end
return #ARGV / 2
"""
)

#: Delete the waiting (not yet delivered, or given back) and delayed messages of a queue;
#: return how many.
#: KEYS: p9..p0, delayed. ARGV: group.
PURGE = """
local group = ARGV[1]
local count = 0
for k = 1, 10 do
  local key = KEYS[k]
  if redis.call('EXISTS', key) == 1 then
    local last = nil
    local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
    if ok then
      for _, g in ipairs(groups) do
        local name, id
        for i = 1, #g, 2 do
          if g[i] == 'name' then name = g[i + 1]
          elseif g[i] == 'last-delivered-id' then id = g[i + 1] end
        end
        if name == group then last = id end
      end
    end
    local ok2, given = pcall(redis.call, 'XPENDING', key, group, '-', '+', 100000, 'returned')
    if ok2 and type(given) == 'table' and #given > 0 then  -- given back: waiting too
      for _, e in ipairs(given) do
        redis.call('XACK', key, group, e[1])
        redis.call('XDEL', key, e[1])
      end
      count = count + #given
    end
    local start = '-'
    if last then start = '(' .. last end
    while true do
      local entries = redis.call('XRANGE', key, start, '+', 'COUNT', 1000)
      if #entries == 0 then break end
      for _, e in ipairs(entries) do redis.call('XDEL', key, e[1]) end
      count = count + #entries
      start = '(' .. entries[#entries][1]
    end
  end
end
count = count + redis.call('ZCARD', KEYS[11])
redis.call('DEL', KEYS[11])
return count
"""

#: Count a queue's messages: waiting (in its streams, not delivered, or given back: pending
#: for `returned`), running (delivered to the group, not acknowledged: acknowledged ones are
#: deleted) and delayed.
#: KEYS: p9..p0, delayed. ARGV: group. Returns {waiting, running, delayed}.
QUEUE_STATS = """
local group = ARGV[1]
local waiting, running = 0, 0
for k = 1, 10 do
  local key = KEYS[k]
  local length = redis.call('XLEN', key)
  if length > 0 then
    local pending = 0
    local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
    if ok then
      for _, g in ipairs(groups) do
        local name, count
        for i = 1, #g, 2 do
          if g[i] == 'name' then name = g[i + 1]
          elseif g[i] == 'pending' then count = g[i + 1] end
        end
        if name == group then pending = count end
      end
    end
    local given = 0
    local ok2, summary = pcall(redis.call, 'XPENDING', key, group)
    if ok2 and type(summary[4]) == 'table' then
      for _, c in ipairs(summary[4]) do
        if c[1] == 'returned' then given = tonumber(c[2]) end
      end
    end
    running = running + pending - given
    waiting = waiting + length - pending + given
  end
end
return {waiting, running, redis.call('ZCARD', KEYS[11])}
"""

#: Take dead letters out by id; with a stream, add their bodies to it (never delivered).
#: KEYS: dead, info[, stream]. ARGV: ids. Returns how many were taken.
TAKE_DEAD = (
    _COMMON
    + """
local dead, info, stream = KEYS[1], KEYS[2], KEYS[3]
local taken, freed = 0, 0
for i = 1, #ARGV do
  local e = redis.call('XRANGE', dead, ARGV[i], ARGV[i])[1]
  if e then
    if stream then
      local f, body = e[2], ''
      for j = 1, #f, 2 do if f[j] == 'b' then body = f[j + 1] end end
      redis.call('XADD', stream, '*', 'b', body, 'n', '0')
    end
    redis.call('XDEL', dead, e[1])
    freed, taken = freed + dead_size(e), taken + 1
  end
end
if redis.call('XLEN', dead) == 0 then
  redis.call('HSET', info, 'bytes', 0)
else
  redis.call('HINCRBY', info, 'bytes', -freed)
end
return taken
"""
)

#: Delete every dead letter of a queue. KEYS: dead, info. Returns how many there were.
PURGE_DEAD = """
local kept = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'bytes', 0)
return kept
"""
