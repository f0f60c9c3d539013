-- task_claim: take the next pending task of an agent type for one agent, in one atomic step:
-- pop the queue (highest priority first, FIFO within a priority), move the task to
-- "starting" with its agent, attempts + 1 and a deadline (server TIME + its timeout), and
-- index the deadline. The script runs alone, so no task is ever claimed twice.
--
-- KEYS[1]  the agent type's queue (<P>queue); every other key is <P>... in the same hash tag
-- KEYS[2]  this claim's operation marker (<P>op:<uuid>): a resend after a lost reply returns
--          the task the first send claimed instead of claiming another
-- ARGV[1]  P, the agent type's prefix
-- ARGV[2]  the claiming agent's id
-- ARGV[3]  its process id ("" for none)
-- ARGV[4]  how long the operation marker is kept, in ms
--
-- Returns the claimed task's hash as a flat field/value list, or nil when nothing is pending.
-- idempotent: true
local P = ARGV[1]
local done = redis.call("GET", KEYS[2])
if done then
  return redis.call("HGETALL", P .. "task:" .. done)
end
while true do
  local popped = redis.call("ZPOPMIN", KEYS[1])
  if #popped == 0 then
    return false
  end
  local id = string.sub(popped[1], 18)
  local key = P .. "task:" .. id
  local f = redis.call("HMGET", key, "status", "ver", "att", "tmo", "cseq")
  -- Every step that moves a task out of "pending" removes its queue member, so anything
  -- else popped here is debris (a task deleted mid-way): dropped, and the next one taken.
  if f[1] == "pending" then
    local t = redis.call("TIME")
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    local deadline = now + tonumber(f[4])
    redis.call("HSET", key, "status", "starting", "agent", ARGV[2], "att", tonumber(f[3]) + 1,
      "ver", tonumber(f[2]) + 1, "updated", now, "deadline", deadline)
    if ARGV[3] ~= "" then
      redis.call("HSET", key, "pid", ARGV[3])
    end
    redis.call("ZREM", P .. "idx:pending", id)
    redis.call("ZADD", P .. "idx:starting", f[5], id)
    redis.call("ZADD", P .. "deadlines", deadline, id)
    redis.call("SET", KEYS[2], id, "PX", ARGV[4])
    return redis.call("HGETALL", key)
  end
end
