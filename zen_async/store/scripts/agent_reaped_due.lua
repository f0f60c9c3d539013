-- agent_reaped_due: claim the reaped agents of one shard whose grace period is over, so
-- that exactly one caller releases their ports.
--
-- KEYS[1]  the shard's reaped sorted set (<P>reaped), scored by grace deadline (ms)
-- ARGV[1]  at most this many agents per call
--
-- Returns the claimed agent ids.
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now, "LIMIT", 0, tonumber(ARGV[1]))
if #due > 0 then
  redis.call("ZREM", KEYS[1], unpack(due))
end
return due
