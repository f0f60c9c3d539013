-- port_transfer: hand a live lease from one holder to another of the same tenant, keeping
-- its port and fencing token (the pre-leased block: an instance's reserve lease becomes an
-- agent's lease when an allocation made during an outage is replayed).
--
-- KEYS[1..7]  free, used, exp, owner, byagent, quar, resv of the host (see port_allocate.lua)
-- ARGV[1]  current holder (the reserve): "<tenant>/<reserve owner>"
-- ARGV[2]  port
-- ARGV[3]  fencing token of the lease
-- ARGV[4]  new holder (the agent): "<tenant>/<agent>"
-- ARGV[5]  new TTL in ms, counted from now
-- ARGV[6]  host name (for messages)
--
-- Returns the new expiry (server ms).
-- Errors: "CONFLICT ..." when the lease is not held by ARGV[1] with that token, or expired.
-- idempotent: true (a resend finds the lease already transferred and renews it)
local exp, owner, byagent, resv = KEYS[3], KEYS[4], KEYS[5], KEYS[7]

--@include port_intervals

local from, port, token, to = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local _, from_agent = split_holder(from)
local _, to_agent = split_holder(to)
local where = "port " .. port .. " on host " .. ARGV[6]
local rec = redis.call("HGET", owner, port)
local held, holder
if rec then held, holder = string.match(rec, "^(%d+):(.*)$") end
if held ~= token or (holder ~= from and holder ~= to) then
  return redis.error_reply("CONFLICT " .. where .. " is no longer the pre-leased lease " ..
    "(token " .. token .. ") of " .. from_agent .. "; it is " ..
    (rec and held_by(holder, held, from) or "free") .. ", so it cannot be handed to " ..
    to_agent)
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if holder == from and tonumber(redis.call("ZSCORE", exp, port)) <= now then
  return redis.error_reply("CONFLICT " .. where .. ": the pre-leased lease of " .. from_agent ..
    " expired before it could be handed to " .. to_agent)
end
redis.call("HSET", owner, port, token .. ":" .. to)
redis.call("ZREM", byagent, index_member(from, port))
redis.call("ZADD", byagent, 0, index_member(to, port))
redis.call("ZREM", resv, port)
local renewed = now + tonumber(ARGV[5])
redis.call("ZADD", exp, renewed, port)
return renewed
