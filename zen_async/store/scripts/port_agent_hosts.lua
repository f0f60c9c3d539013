-- port_agent_hosts: note that an agent holds (or is about to hold) leases on some hosts, so
-- renew_agent / release_agent / leases can find them. Each host is kept until its latest
-- lease could have expired, plus a grace for clock skew between nodes.
--
-- KEYS[1]  the agent's host index: ZSET host -> deadline (server ms)
-- ARGV[1]  lease TTL in ms
-- ARGV[2]  grace in ms
-- ARGV[3..] host names
--
-- Returns the number of hosts indexed.
-- idempotent: true
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline, grace = now + tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV do
  redis.call("ZADD", KEYS[1], "GT", deadline, ARGV[i])
end
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", "(" .. (now - grace))
local last = redis.call("ZRANGE", KEYS[1], -1, -1, "WITHSCORES")
if last[2] then
  redis.call("PEXPIRE", KEYS[1], math.max(1, tonumber(last[2]) - now + grace))
end
return redis.call("ZCARD", KEYS[1])
