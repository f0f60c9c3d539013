-- port_agent_hosts: note that agents hold (or are about to hold) leases on some hosts, so
-- renew_agent / release_agent / leases can find them. Each host is kept until its latest
-- lease could have expired, plus a grace for clock skew between nodes.
--
-- KEYS[i]  agent i's host index: ZSET host -> deadline (server ms); on Cluster the keys of
--          one call share a hash tag (the agents' shard)
-- ARGV[1]  lease TTL in ms
-- ARGV[2]  grace in ms
-- ARGV[2 + i]  the host names for KEYS[i], joined by "," (host names have no comma)
--
-- Returns the number of host indexes written.
-- idempotent: true
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline, grace = now + tonumber(ARGV[1]), tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  for host in string.gmatch(ARGV[2 + i], "[^,]+") do
    redis.call("ZADD", key, "GT", deadline, host)
  end
  redis.call("ZREMRANGEBYSCORE", key, "-inf", "(" .. (now - grace))
  local last = redis.call("ZRANGE", key, -1, -1, "WITHSCORES")
  if last[2] then
    redis.call("PEXPIRE", key, math.max(1, tonumber(last[2]) - now + grace))
  end
end
return #KEYS
