-- event_publish: append one event to a stream (and optionally to an agent's audit stream),
-- at most once per idempotency key, and send a pub/sub hint; one atomic step.
--
-- KEYS[1]  the stream
-- KEYS[2]  the idempotency marker (holds the entry id once published; unused if ARGV[1] = "0")
-- KEYS[3]  the agent's audit stream (unused if ARGV[2] = "0")
-- ARGV[1]  idempotency marker TTL in ms, "0" when the event has no idempotency key
-- ARGV[2]  audit stream max length (approximate trim), "0" for no audit copy
-- ARGV[3]  pub/sub channel for the hint, "" for none
-- ARGV[4]  the logical stream name, for the hint
-- ARGV[5..] envelope fields without "time": type, <t>, agent, <a>, v, <n>, data, <json>[, key, <k>]
--
-- Returns the entry id: the existing one when the idempotency key was already published.
-- All keys share one hash tag. Not idempotent without a key (a retry would append twice);
-- the caller retries only calls that carry a key.
if ARGV[1] ~= "0" then
  local seen = redis.call("GET", KEYS[2])
  if seen then
    return seen
  end
end
local now = redis.call("TIME")
local millis = tostring(now[1] * 1000 + math.floor(now[2] / 1000))
local fields = {"time", millis}
for i = 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local id = redis.call("XADD", KEYS[1], "*", unpack(fields))
if ARGV[1] ~= "0" then
  redis.call("SET", KEYS[2], id, "PX", ARGV[1])
end
if ARGV[2] ~= "0" then
  redis.call("XADD", KEYS[3], "MAXLEN", "~", ARGV[2], id, unpack(fields))
end
if ARGV[3] ~= "" then
  redis.call("PUBLISH", ARGV[3], cjson.encode({stream = ARGV[4], id = id, type = ARGV[6],
    agent = ARGV[8]}))
end
return id
