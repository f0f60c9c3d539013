-- task_lease_start: record the port lease of the agent executing a claimed task and start
-- the task (starting -> running), in one atomic step, if the task is still that claim's
-- (starting or running, same agent, same attempt): task_set_port.lua and a transition to
-- running in one call. The claim's last step where the task and the host's port keys live
-- in different slots (Cluster), so that the lease cannot join the claim itself.
--
-- KEYS[1]  the task hash (<P>task:<id>); every other key is <P>... in the same hash tag
-- ARGV[1]  P, the agent type's prefix
-- ARGV[2]  task id
-- ARGV[3]  agent id
-- ARGV[4]  attempt number of the claim
-- ARGV[5]  port
-- ARGV[6]  host of the lease
-- ARGV[7]  fencing token of the lease
--
-- Returns the task's hash as a flat field/value list (one write: the version one up), or
-- nil when the task has moved on (cancelled, timed out, deleted): then the caller releases
-- the lease itself.
-- idempotent: true  (a resend finds the lease's token recorded and returns the task)
local P, id = ARGV[1], ARGV[2]
local f = redis.call("HMGET", KEYS[1], "status", "agent", "att", "token", "ver", "cseq")
if f[4] == ARGV[7] then
  return redis.call("HGETALL", KEYS[1])
end
if (f[1] ~= "starting" and f[1] ~= "running") or f[2] ~= ARGV[3] or f[3] ~= ARGV[4] then
  return false
end
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if f[1] == "starting" then -- else started meanwhile (update_status): only the lease is new
  redis.call("ZREM", P .. "idx:starting", id)
  redis.call("ZADD", P .. "idx:running", f[6], id)
end
redis.call("HSET", KEYS[1], "status", "running", "port", ARGV[5], "host", ARGV[6],
  "token", ARGV[7], "ver", tonumber(f[5]) + 1, "updated", now)
return redis.call("HGETALL", KEYS[1])
