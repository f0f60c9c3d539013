-- task_delete: remove a task from its agent type's hash, queue, indexes and deadline index.
-- A task deleted while it holds a port lease (starting or running) puts that lease in the
-- release outbox. The directory entry and message stream live in another slot: the caller
-- deletes them next.
--
-- KEYS[1]  the task hash (<P>task:<id>); every other key is <P>... in the same hash tag
-- ARGV[1]  P, the agent type's prefix
-- ARGV[2]  task id
-- ARGV[3]  ms after which a sweeper may release the lease if this caller has not
--
-- Returns {status, outbox member or ""}, or nil when there was no such task.
-- idempotent: true
local P, id = ARGV[1], ARGV[2]
local f = redis.call("HMGET", KEYS[1], "status", "qseq", "port", "host", "token", "agent")
local status = f[1]
if not status then
  return false
end
redis.call("DEL", KEYS[1])
redis.call("ZREM", P .. "idx:all", id)
redis.call("ZREM", P .. "idx:" .. status, id)
redis.call("ZREM", P .. "deadlines", id)
if status == "pending" then
  redis.call("ZREM", P .. "queue", string.format("%016d", tonumber(f[2])) .. ":" .. id)
end
local m = ""
if f[3] and (status == "starting" or status == "running") then
  m = f[5] .. "|" .. f[3] .. "|" .. f[4] .. "|" .. f[6] .. "|" .. id
  local t = redis.call("TIME")
  redis.call("ZADD", P .. "release", t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[3]), m)
end
return {status, m}
