-- agent_update: replace an agent's JSON document if its version is the expected one, and
-- bump the version.
--
-- KEYS[1]  the agent hash
-- ARGV[1]  agent id
-- ARGV[2]  expected version
-- ARGV[3]  the new JSON document
-- KEYS[2]  the operation's marker (<P>op:<op id>, same hash tag)
-- ARGV[4]  how long the marker is kept, in ms
--
-- Exactly once per operation id: a call whose marker exists writes nothing and returns the
-- version the first call made.
-- Returns the new version. Errors: "NOTFOUND <id>", "CONFLICT <id> <stored> <expected>"; an
-- error records no marker.
-- idempotent: true
local seen = redis.call("GET", KEYS[2])
if seen then
  return tonumber(seen)
end
local version = redis.call("HGET", KEYS[1], "version")
if not version then
  return redis.error_reply("NOTFOUND " .. ARGV[1])
end
if tonumber(version) ~= tonumber(ARGV[2]) then
  return redis.error_reply("CONFLICT " .. ARGV[1] .. " " .. version .. " " .. ARGV[2])
end
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
version = tonumber(version) + 1
redis.call("HSET", KEYS[1], "doc", ARGV[3], "version", version, "updated", now)
redis.call("SET", KEYS[2], version, "PX", ARGV[4])
return version
