-- agent_heartbeat: refresh the liveness leases of agents of one shard and record their
-- gauges (the same gauges for all of them); optionally, read where each holds port leases
-- (its host index, see port_agent_hosts.lua), so the caller can renew them.
--
-- KEYS[i]  the hash of agent i (<P>agent:<id>)
-- ARGV[1]  P, the shard prefix
-- ARGV[2]  lease TTL in ms
-- ARGV[3]  memory in MB ("" to keep)
-- ARGV[4]  CPU percent ("" to keep)
-- ARGV[5]  open connections ("" to keep)
-- ARGV[6]  H, the prefix of the agents' host indexes in this shard's hash tag (an agent's is
--          H .. id .. ":hosts"), or "" not to read them
-- ARGV[6 + i]  the id of agent i
--
-- Returns {expiry, {s_1, ..., s_n}, {i, hosts_i, j, hosts_j, ...}}: expiry the new lease
-- expiry (server ms); s_i 1 when agent i's lease was renewed, 0 for a terminated agent
-- (gauges recorded, no lease), -1 when it does not exist; then, for each agent i with a
-- non-empty host index, i and its host names joined by "," (no list without H).
-- idempotent: true
local P, H = ARGV[1], ARGV[6]
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local expiry = now + tonumber(ARGV[2])
local fields = {"seen", now}
if ARGV[3] ~= "" then fields[#fields + 1] = "mem"; fields[#fields + 1] = ARGV[3] end
if ARGV[4] ~= "" then fields[#fields + 1] = "cpu"; fields[#fields + 1] = ARGV[4] end
if ARGV[5] ~= "" then fields[#fields + 1] = "conns"; fields[#fields + 1] = ARGV[5] end
local statuses, leases, live, holders = {}, {}, {}, {}
for i, key in ipairs(KEYS) do
  local id = ARGV[6 + i]
  local state = redis.call("HGET", key, "state")
  if not state then
    statuses[i] = -1
  else
    redis.call("HSET", key, unpack(fields))
    if state == "terminated" then
      statuses[i] = 0
    else
      leases[#leases + 1] = expiry
      leases[#leases + 1] = id
      live[#live + 1] = id
      statuses[i] = 1
    end
  end
  if H ~= "" then
    local hosts = redis.call("ZRANGE", H .. id .. ":hosts", 0, -1)
    if #hosts > 0 then
      holders[#holders + 1] = i
      holders[#holders + 1] = table.concat(hosts, ",")
    end
  end
end
if #live > 0 then
  redis.call("ZADD", P .. "leases", unpack(leases))
  redis.call("ZREM", P .. "reaped", unpack(live))
end
return {expiry, statuses, holders}
