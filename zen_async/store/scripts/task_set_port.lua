-- task_set_port: record the port lease of the agent executing a claimed task, if the task is
-- still that claim's (starting or running, same agent, same attempt).
--
-- KEYS[1]  the task hash
-- ARGV[1]  agent id
-- ARGV[2]  attempt number of the claim
-- ARGV[3]  port
-- ARGV[4]  host of the lease
-- ARGV[5]  fencing token of the lease
--
-- Returns the task's hash as a flat field/value list, or nil when the task has moved on
-- (cancelled, timed out, deleted): then the caller releases the lease itself.
-- idempotent: true
local f = redis.call("HMGET", KEYS[1], "status", "agent", "att", "token", "ver")
if f[4] == ARGV[5] then
  return redis.call("HGETALL", KEYS[1])
end
if (f[1] ~= "starting" and f[1] ~= "running") or f[2] ~= ARGV[1] or f[3] ~= ARGV[2] then
  return false
end
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call("HSET", KEYS[1], "port", ARGV[3], "host", ARGV[4], "token", ARGV[5],
  "ver", tonumber(f[5]) + 1, "updated", now)
return redis.call("HGETALL", KEYS[1])
