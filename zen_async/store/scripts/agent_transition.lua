-- agent_transition: move an agent to a new lifecycle state in one atomic step: check the
-- current state and version, write the state and bump the version, move the agent between
-- its shard's per-state indexes, and append a "state_changed" event to the shard stream and
-- the agent's audit trail (then send a pub/sub hint). All of it happens or none of it does.
--
-- KEYS[1]  the agent hash (<P>agent:<id>); every other key is <P>... in the same hash tag
-- ARGV[1]  P, the shard prefix
-- ARGV[2]  agent id
-- ARGV[3]  the target state
-- ARGV[4]  the states the target may be reached from, as ",a,b,c,"
-- ARGV[5]  expected version, "" for any
-- ARGV[6]  reason ("" for none)
-- ARGV[7]  audit stream max length
-- ARGV[8]  pub/sub channel for the hint ("" for none)
-- ARGV[9]  the shard stream's logical name, for the hint
--
-- Returns {from_state, new_version, event_id}. Errors: "NOTFOUND <id>",
-- "CONFLICT <id> <stored version> <expected>", "INVALID <id> <from> <to>".
--@include agent_event
local P, id, to = ARGV[1], ARGV[2], ARGV[3]
local current = redis.call("HMGET", KEYS[1], "state", "version", "type")
local from, version, kind = current[1], tonumber(current[2]), current[3]
if not from then
  return redis.error_reply("NOTFOUND " .. id)
end
if ARGV[5] ~= "" and version ~= tonumber(ARGV[5]) then
  return redis.error_reply("CONFLICT " .. id .. " " .. version .. " " .. ARGV[5])
end
if not string.find(ARGV[4], "," .. from .. ",", 1, true) then
  return redis.error_reply("INVALID " .. id .. " " .. from .. " " .. to)
end
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
version = version + 1
redis.call("HSET", KEYS[1], "state", to, "version", version, "updated", now)
redis.call("ZREM", P .. "idx:st:" .. from, id)
redis.call("ZREM", P .. "idx:st:" .. from .. ":" .. kind, id)
redis.call("ZADD", P .. "idx:st:" .. to, 0, id)
redis.call("ZADD", P .. "idx:st:" .. to .. ":" .. kind, 0, id)
if to == "terminated" then
  redis.call("ZREM", P .. "leases", id)
end
local data = {from = from, to = to, version = version}
if ARGV[6] ~= "" then
  data["reason"] = ARGV[6]
end
local event = emit_agent_event(P, id, "state_changed", cjson.encode(data), now, ARGV[7],
  ARGV[8], ARGV[9], {to = to, version = version})
return {from, version, event}
