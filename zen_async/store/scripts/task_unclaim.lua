-- task_unclaim: give a claimed task back when its agent could not get a port: back to
-- "pending" at its old place in the queue, attempts as before the claim, deadline removed.
-- Only the claim it names is undone (status starting, same agent, same attempt).
--
-- KEYS[1]  the task hash (<P>task:<id>); every other key is <P>... in the same hash tag
-- ARGV[1]  P, the agent type's prefix
-- ARGV[2]  task id
-- ARGV[3]  agent id of the claim
-- ARGV[4]  attempt number of the claim
--
-- Returns 1 if the task went back to the queue, 0 if it was no longer that claim's.
-- idempotent: true
local P, id = ARGV[1], ARGV[2]
local f = redis.call("HMGET", KEYS[1], "status", "agent", "att", "ver", "prio", "qseq", "cseq")
if f[1] ~= "starting" or f[2] ~= ARGV[3] or f[3] ~= ARGV[4] then
  return 0
end
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call("HSET", KEYS[1], "status", "pending", "att", tonumber(f[3]) - 1,
  "ver", tonumber(f[4]) + 1, "updated", now)
redis.call("HDEL", KEYS[1], "agent", "pid", "deadline", "port", "host", "token")
redis.call("ZREM", P .. "deadlines", id)
redis.call("ZREM", P .. "idx:starting", id)
redis.call("ZADD", P .. "idx:pending", f[7], id)
redis.call("ZADD", P .. "queue", -tonumber(f[5]), string.format("%016d", tonumber(f[6])) .. ":" .. id)
return 1
