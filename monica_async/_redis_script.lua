-- monica-async: one rate limit shared through Redis (see monica_async/_redis.py).
--
-- Every operation is one call of this script, so it runs atomically. Times are
-- microseconds on the Redis server's own clock (TIME): the clocks of the processes
-- sharing the limit never matter, they only ever receive durations.
--
-- The algorithm is RateLimit's (monica_async/_ratelimit.py): a sliding log of
-- booked start times guarantees that no window of `per` seconds holds more than
-- `requests` starts (the requests-th latest start must be `per + margin` old), and
-- GCRA (the generic cell rate algorithm: a leaky bucket kept as one "theoretical
-- arrival time", tat) spaces starts `per / requests` apart once `burst` are spent.
-- A caller books a start time (a slot) and sleeps until it; nobody polls.
--
-- KEYS[1]  hash: tat, nb (the shared 429 pause: "not before"), epoch (bumped each
--          time the pause moves later), streak (429s in a row)
-- KEYS[2]  sorted set: the log, member = booking id, score = slot
-- KEYS[3]  sorted set: limiters sharing the key, member = limiter id, score = the later
--          of its last call and its latest booked slot
-- KEYS[4]  sorted set: limiters' last calls, member = limiter id, score = the call
-- ARGV     mode, requests, per, margin, burst, then per mode:
--   book     member, limiter id, [held member, held epoch], [since]
--            With a held booking (a caller about to start): keep it if the pause did
--            not move since it was booked (or is already over), else give it back and
--            book again behind the pause. With since (a time), also count the
--            limiters that called at or after it (0 without).
--            Returns {wait, epoch, member, streak, peers, pause left, now, called since}.
--   pause    retry-after ('' for none), u in [0, 1), default pause, longest default
--            Returns {pause left, epoch, streak}.
--   success  (ends a streak of 429s) Returns 0.
--   cancel   member (a booking whose caller gave up) Returns 0 or 1.
-- Every write sets the keys to expire once nothing they hold can matter any more.

if redis.replicate_commands then
    -- Redis 3.2 to 4 only: allows writes after the non-deterministic TIME.
    redis.replicate_commands()
end

local state, log, peers, calls = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode = ARGV[1]
-- A caller that passes the wrong arguments must fail loudly, never limit wrongly.
local arity = {book = 10, pause = 9, success = 5, cancel = 6}
if arity[mode] == nil or #ARGV ~= arity[mode] or #KEYS ~= 4 then
    return redis.error_reply('monica-async rate limit script: bad call ' .. tostring(mode))
end
local requests = tonumber(ARGV[2])
local per = tonumber(ARGV[3])
local margin = tonumber(ARGV[4])
local burst = tonumber(ARGV[5])
local interval = per / requests

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local fields = redis.call('HMGET', state, 'tat', 'nb', 'epoch', 'streak')
local tat = tonumber(fields[1]) or -math.huge
local nb = tonumber(fields[2]) or 0
local epoch = tonumber(fields[3]) or 0
local streak = tonumber(fields[4]) or 0

local function latest_score(rank)
    local entry = redis.call('ZREVRANGE', log, rank, rank, 'WITHSCORES')
    if entry[2] then
        return tonumber(entry[2])
    end
    return nil
end

-- Keep the keys until the later of the last booking, tat and the pause, plus one
-- window: by then none of it can delay anyone.
local function expire()
    local horizon = math.max(now, tat, nb, latest_score(0) or now)
    local ttl = math.ceil((horizon - now + per + margin) / 1000) + 1
    redis.call('PEXPIRE', state, ttl)
    redis.call('PEXPIRE', log, ttl)
    redis.call('PEXPIRE', peers, ttl)
    redis.call('PEXPIRE', calls, ttl)
end

local function pause_left()
    return math.max(0, math.ceil(nb - now))
end

if mode == 'book' then
    local member, peer = ARGV[6], ARGV[7]
    local held, held_epoch = ARGV[8], tonumber(ARGV[9])
    local since = tonumber(ARGV[10])

    -- Who shares the key: the limiters that started during the last window or hold a
    -- slot after it. A limiter whose callers sleep on slots booked far ahead asks
    -- Redis less than once a window, yet it is still taking its part of the limit.
    -- And, for a limiter back from an outage, how many have called since it came back.
    local function count_peers(slot)
        local last = tonumber(redis.call('ZSCORE', peers, peer))
        if not last or slot > last then
            redis.call('ZADD', peers, slot, peer)
        end
        redis.call('ZREMRANGEBYSCORE', peers, '-inf', now - per - margin)
        redis.call('ZADD', calls, now, peer)
        redis.call('ZREMRANGEBYSCORE', calls, '-inf', now - per - margin)
        local back = 0
        if since then
            back = redis.call('ZCOUNT', calls, since, '+inf')
        end
        return redis.call('ZCARD', peers), back
    end

    if held and held ~= '' then
        local kept = tonumber(redis.call('ZSCORE', log, held))
        if kept and (held_epoch == epoch or now >= nb) then
            local seen, back = count_peers(math.max(now, kept))
            expire()
            local wait = math.max(0, math.ceil(kept - now))
            return {wait, epoch, held, streak, seen, pause_left(), now, back}
        end
        -- The pause moved while the caller slept: its slot may fall inside it.
        redis.call('ZREM', log, held)
    end

    -- Starts this old no longer bound any future slot.
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - per - margin)

    local paused = nb > now
    local slot = math.max(now, nb, tat - (burst - 1) * interval)
    local window_start = latest_score(requests - 1)
    if window_start then
        slot = math.max(slot, window_start + per + margin)
    end
    local last = latest_score(0)
    if last then
        slot = math.max(slot, last)
    end
    -- Book at most one window ahead: a caller further back is told when its slot
    -- will be that close (and asks again then), so that if Redis goes away no more
    -- than a window's starts were promised beyond what each local fallback counts.
    local horizon = now + per + margin
    if slot > horizon then
        local seen, back = count_peers(now)
        expire()
        return {math.ceil(slot - horizon), epoch, '', streak, seen, pause_left(), now, back}
    end
    if paused and slot <= nb then
        -- Resume after a pause paced, not as a herd: the burst allowance starts empty.
        tat = math.max(tat, slot + (burst - 1) * interval)
    end
    tat = math.max(tat, slot) + interval
    redis.call('ZADD', log, slot, member)
    redis.call('HSET', state, 'tat', tat)
    local seen, back = count_peers(slot)
    expire()
    return {math.ceil(slot - now), epoch, member, streak, seen, pause_left(), now, back}
end

if mode == 'pause' then
    local retry_after, u = ARGV[6], tonumber(ARGV[7])
    local default, longest = tonumber(ARGV[8]), tonumber(ARGV[9])
    local pause
    if retry_after == '' then
        pause = math.min(default * 2 ^ math.min(streak, 16), longest)
    else
        pause = math.max(0, tonumber(retry_after))
    end
    streak = streak + 1
    -- A little positive jitter (drawn by the caller: scripts have no good randomness)
    -- so that everyone told the same Retry-After does not come back at once.
    local untl = now + pause + u * math.min(0.1 * pause, 250000)
    if untl > nb then
        nb = untl
        epoch = epoch + 1
    end
    redis.call('HSET', state, 'nb', nb, 'epoch', epoch, 'streak', streak)
    expire()
    return {pause_left(), epoch, streak}
end

if mode == 'success' then
    if streak > 0 then
        redis.call('HSET', state, 'streak', 0)
        expire()
    end
    return 0
end

-- mode == 'cancel'
return redis.call('ZREM', log, ARGV[6])
