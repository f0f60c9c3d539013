-- task_sweep: one sweeper pass over an agent type. Tasks in starting or running whose
-- deadline (server ms) has passed move to "timeout" (status, error, version, indexes; their
-- port lease goes to the release outbox), and outbox entries due for release are handed to
-- this caller, their due time pushed back so no other sweeper takes them meanwhile. The
-- script runs alone, so two sweepers never handle the same task or entry.
--
-- KEYS[1]  the agent type's deadline index (<P>deadlines); every other key is <P>... in the
--          same hash tag
-- ARGV[1]  P, the agent type's prefix
-- ARGV[2]  at most this many tasks, and this many outbox entries, per call
-- ARGV[3]  ms before an outbox entry handed out here is due again (if not released by then)
--
-- Returns {{id, agent, version, attempts, from, outbox member or ""}, ...} for the tasks
-- timed out, then {member, ...} for the outbox entries due.
-- idempotent: true  (a resend is a later pass: it times out only what has expired by then)
local P = ARGV[1]
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local again = now + tonumber(ARGV[3])
local timed_out, due = {}, {}
local expired = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now, "LIMIT", 0, tonumber(ARGV[2]))
for _, id in ipairs(expired) do
  redis.call("ZREM", KEYS[1], id)
  local key = P .. "task:" .. id
  local f = redis.call("HMGET", key, "status", "ver", "agent", "port", "host", "token", "cseq",
    "tmo", "att")
  local from = f[1]
  if from == "starting" or from == "running" then
    local version = tonumber(f[2]) + 1
    redis.call("HSET", key, "status", "timeout", "ver", version, "updated", now, "lop", "",
      "lfrom", from, "error", "timed out: not finished within " .. (tonumber(f[8]) / 1000)
      .. " s of its claim")
    redis.call("HDEL", key, "deadline")
    redis.call("ZREM", P .. "idx:" .. from, id)
    redis.call("ZADD", P .. "idx:timeout", f[7], id)
    local m = ""
    if f[4] then
      m = f[6] .. "|" .. f[4] .. "|" .. f[5] .. "|" .. f[3] .. "|" .. id
      redis.call("ZADD", P .. "release", again, m)
    end
    timed_out[#timed_out + 1] = {id, f[3] or "", version, tonumber(f[9]), from, m}
  end
end
for _, m in ipairs(redis.call("ZRANGEBYSCORE", P .. "release", "-inf", now, "LIMIT", 0,
    tonumber(ARGV[2]))) do
  redis.call("ZADD", P .. "release", again, m)
  due[#due + 1] = m
end
return {timed_out, due}
