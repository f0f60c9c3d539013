-- port_migrate: move one tenant's leases on one host from the per-tenant keys of earlier
-- versions ("zen:t:<tenant>:[state:]ports:{<host>}:...", holders without a tenant) into the
-- host's keys shared by every tenant, then delete the old keys. Live leases keep their port,
-- token, expiry and agent; expired ones and quarantines are dropped. The old and the new
-- keys share the hash tag {<host>}, so this is one atomic step on one Cluster slot.
--
-- KEYS[1..7]  free, used, exp, owner, byagent, quar, resv of the host (see port_allocate.lua)
-- KEYS[8]     seq of the host
-- KEYS[9..15] the tenant's old free, used, exp, owner, byagent, quar, seq of the host
-- ARGV[1]  the tenant
-- ARGV[2]  prefix of the old outage reserves' owner ids ("zen-reserve.")
--
-- Returns {{port, token, agent, ...} moved, {port, token, agent, ...} not moved because the
-- port is held by another lease (the double booking of earlier versions: the lease already
-- in the host's keys wins)}; {{}, {}} when there is nothing (left) to move.
-- Cost: O(k log n) for the tenant's k old leases on the host; O(1) once they are moved.
-- idempotent: true (a resend finds the old keys gone)
local free, used, exp, owner, byagent, quar, resv =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local old_exp, old_owner, old_seq = KEYS[11], KEYS[12], KEYS[15]

--@include port_intervals

local moved, refused = {}, {}
local old = {KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15]}
if redis.call("EXISTS", unpack(old)) == 0 then return {moved, refused} end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tenant, reserve = ARGV[1], ARGV[2]
ensure_free()
local records = redis.call("HGETALL", old_owner)
for i = 1, #records, 2 do
  local port = tonumber(records[i])
  local token, agent = string.match(records[i + 1], "^(%d+):(.*)$")
  local expiry = tonumber(redis.call("ZSCORE", old_exp, port) or "0")
  if agent and agent ~= "" and expiry > now then
    local holder = tenant .. "/" .. agent
    local rec = redis.call("HGET", owner, port)
    if not rec then
      take(port)
      redis.call("ZADD", used, port, port)
      redis.call("ZADD", exp, expiry, port)
      redis.call("HSET", owner, port, token .. ":" .. holder)
      redis.call("ZADD", byagent, 0, index_member(holder, port))
      if string.sub(agent, 1, #reserve) == reserve then redis.call("ZADD", resv, port, port) end
      moved[#moved + 1] = port
      moved[#moved + 1] = tonumber(token)
      moved[#moved + 1] = agent
    elseif rec ~= token .. ":" .. holder then
      refused[#refused + 1] = port
      refused[#refused + 1] = tonumber(token)
      refused[#refused + 1] = agent
    end
  end
end
-- Tokens stay strictly increasing per host over the moved leases too.
local last = tonumber(redis.call("GET", old_seq) or "0")
if last > tonumber(redis.call("GET", KEYS[8]) or "0") then redis.call("SET", KEYS[8], last) end
redis.call("DEL", unpack(old))
return {moved, refused}
