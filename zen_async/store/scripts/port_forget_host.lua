-- port_forget_host: take one host back out of an agent's host index, unless it was noted
-- again since the caller read it. Used when an allocation that noted the host (before it
-- ran, see port_agent_hosts.lua) failed and the agent holds no lease there.
--
-- KEYS[1]  the agent's host index: ZSET host -> deadline (server ms)
-- ARGV[1]  the host
-- ARGV[2]  the deadline the caller read; a later note (another allocation) raised it
--
-- Returns 1 if the host was removed, 0 if it was noted again (or already gone).
-- idempotent: true
local deadline = redis.call("ZSCORE", KEYS[1], ARGV[1])
if deadline and tonumber(deadline) == tonumber(ARGV[2]) then
  return redis.call("ZREM", KEYS[1], ARGV[1])
end
return 0
