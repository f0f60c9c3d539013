-- versioned_hset: write fields of an entity hash and bump its version, atomically,
-- optionally only if the stored version is the one the caller read.
--
-- KEYS[1]  the entity hash (field "version" holds its version; absent = 0)
-- ARGV[1]  expected version: "" to write whatever is stored, "0" to create only,
--          "N" to write only if the stored version is N
-- ARGV[2]  TTL in milliseconds for the hash, "" or "0" to keep the current expiry
-- ARGV[3..] field, value, field, value, ...
--
-- Returns the new version. Errors: "CONFLICT <stored> <expected>" when the versions differ.
-- Not idempotent: a retry would bump the version twice.
local stored = tonumber(redis.call("HGET", KEYS[1], "version") or "0")
if ARGV[1] ~= "" and stored ~= tonumber(ARGV[1]) then
  return redis.error_reply("CONFLICT " .. KEYS[1] .. " is at version " .. stored ..
    ", expected " .. ARGV[1])
end
local version = stored + 1
local fields = {"version", version}
for i = 3, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
redis.call("HSET", KEYS[1], unpack(fields))
if ARGV[2] ~= "" and ARGV[2] ~= "0" then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return version
