-- task_transition: move a task to a new status in one atomic step: check the current status
-- against the transition table and the version, write the status (and result or error),
-- bump the version, move the task between its status indexes, take it out of the queue or
-- the deadline index as the move requires, and, when it finishes holding a port lease, put
-- that lease in the release outbox. Nothing is written when a check fails.
--
-- KEYS[1]  the task hash (<P>task:<id>); every other key is <P>... in the same hash tag
-- ARGV[1]  P, the agent type's prefix
-- ARGV[2]  task id
-- ARGV[3]  the target status
-- ARGV[4]  the statuses the target may be reached from, as ",a,b,c,"
-- ARGV[5]  expected version, "" for any
-- ARGV[6]  operation id: a resend with the same id (a reply lost after the send) returns the
--          same reply without writing twice
-- ARGV[7]  "1" to store ARGV[8] as the result, "0" to leave it
-- ARGV[8]  the result, codec-encoded
-- ARGV[9]  the error message to store, "" for none
-- ARGV[10] ms after which a sweeper may release the lease if this caller has not
--
-- Going to "pending" (a retry) queues the task again behind its priority's current tasks and
-- clears its agent, port, result and error. Outbox member: "<token>|<port>|<host>|<agent>|<id>".
-- Returns {from_status, outbox member or "", field, value, ...} (the hash after the write).
-- Errors: "NOTFOUND <id>", "CONFLICT <id> <stored version> <expected>",
-- "INVALID <id> <from> <to>", "VALIDATION ..." (pending -> starting outside a claim).
-- idempotent: true
local P, id, to = ARGV[1], ARGV[2], ARGV[3]
local f = redis.call("HMGET", KEYS[1], "status", "ver", "agent", "port", "host", "token",
  "cseq", "prio", "qseq", "lop", "lfrom")
local from = f[1]
if not from then
  return redis.error_reply("NOTFOUND " .. id)
end
local finished = {completed = true, failed = true, timeout = true, cancelled = true}
local function member()
  if finished[to] and f[4] then
    return f[6] .. "|" .. f[4] .. "|" .. f[5] .. "|" .. f[3] .. "|" .. id
  end
  return ""
end
if f[10] == ARGV[6] then
  local reply = {f[11], member()}
  for _, v in ipairs(redis.call("HGETALL", KEYS[1])) do
    reply[#reply + 1] = v
  end
  return reply
end
if ARGV[5] ~= "" and tonumber(f[2]) ~= tonumber(ARGV[5]) then
  return redis.error_reply("CONFLICT " .. id .. " " .. f[2] .. " " .. ARGV[5])
end
if not string.find(ARGV[4], "," .. from .. ",", 1, true) then
  return redis.error_reply("INVALID " .. id .. " " .. from .. " " .. to)
end
if from == "pending" and to == "starting" then
  return redis.error_reply("VALIDATION task " .. id .. " is pending: a task starts through "
    .. "claim_next(), which assigns its agent and port")
end
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call("HSET", KEYS[1], "status", to, "ver", tonumber(f[2]) + 1, "updated", now,
  "lop", ARGV[6], "lfrom", from)
redis.call("ZREM", P .. "idx:" .. from, id)
redis.call("ZADD", P .. "idx:" .. to, f[7], id)
if from == "pending" then
  redis.call("ZREM", P .. "queue", string.format("%016d", tonumber(f[9])) .. ":" .. id)
end
if (from == "starting" or from == "running") and to ~= "starting" and to ~= "running" then
  redis.call("ZREM", P .. "deadlines", id)
  redis.call("HDEL", KEYS[1], "deadline")
end
if ARGV[7] == "1" then
  redis.call("HSET", KEYS[1], "result", ARGV[8])
end
if ARGV[9] ~= "" then
  redis.call("HSET", KEYS[1], "error", ARGV[9])
end
if to == "pending" then
  local seq = redis.call("INCR", P .. "seq")
  redis.call("HSET", KEYS[1], "qseq", seq)
  redis.call("HDEL", KEYS[1], "agent", "pid", "port", "host", "token", "result", "error")
  redis.call("ZADD", P .. "queue", -tonumber(f[8]), string.format("%016d", seq) .. ":" .. id)
end
local m = member()
if m ~= "" then
  redis.call("ZADD", P .. "release", now + tonumber(ARGV[10]), m)
end
local reply = {from, m}
for _, v in ipairs(redis.call("HGETALL", KEYS[1])) do
  reply[#reply + 1] = v
end
return reply
