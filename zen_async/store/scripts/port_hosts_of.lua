-- port_hosts_of: the hosts where each of some agents may hold leases (read only: one call
-- per chunk of agents instead of one ZRANGE each).
--
-- KEYS[i]  agent i's host index (see port_agent_hosts.lua); on Cluster the keys of one call
--          share a hash tag (the agents' shard)
-- ARGV     none
--
-- Returns, for each key, its host names.
-- idempotent: true
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call("ZRANGE", key, 0, -1)
end
return out
