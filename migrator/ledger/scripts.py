"""The ledger's Lua scripts: every write that must look at a file's state first, atomic.

Each script's comment says its KEYS and ARGV; ``migrator.ledger.core`` calls them.
"""

from __future__ import annotations

#: Hex digits of the URI hash that pick the dedup bucket: 16**4 = 65,536 buckets, each a
#: listpack up to ``hash-max-listpack-entries`` (512 by default in Redis 7), so up to ~28
#: million files per job stay compact (~6 million at 128); measured in docs/scale.md.
BUCKET_DIGITS = 4

# Record the outcomes of a contiguous run of one batch's files.
# KEYS: counts, failures, timeline, timeline_bytes, state string, outcome string, meta
# ARGV: batch id, first index, new state codes (one char per file, '-' = leave alone),
#       outcome lines (one per changed file, '\n'-joined, in order), per-file seconds
#       (space-separated epoch seconds), per-file bytes, per-file warning+transcoded flags,
#       the job's creation stamp as the writer knows it ('' = any): another one means the
#       job was lost and planned anew since, and nothing is written (returns -1)
RECORD = """
if ARGV[9] ~= '' and redis.call('HGET', KEYS[7], 'created') ~= ARGV[9] then return -1 end
local first = tonumber(ARGV[2])
local new = ARGV[3]
local n = #new
local old = redis.call('GETRANGE', KEYS[5], first, first + n - 1)
local lines = {}
for line in string.gmatch(ARGV[4], '[^\\n]+') do lines[#lines + 1] = line end
local secs, sizes, flags = {}, {}, {}
for v in string.gmatch(ARGV[6], '%S+') do secs[#secs + 1] = v end
for v in string.gmatch(ARGV[7], '%S+') do sizes[#sizes + 1] = tonumber(v) end
for v in string.gmatch(ARGV[8], '%S+') do flags[#flags + 1] = v end
local names = {s = 'stored', f = 'failed', k = 'skipped'}
local result, out = {}, {}
local delta = {stored = 0, failed = 0, skipped = 0, bytes_stored = 0, warnings = 0, transcoded = 0}
local per_sec, per_sec_bytes = {}, {}
local changed = 0
for i = 1, n do
  local was = string.sub(old, i, i)
  local now = string.sub(new, i, i)
  if now ~= '-' and was ~= 's' and was ~= '' then
    if was ~= '.' then
      delta[names[was]] = delta[names[was]] - 1
      if was == 'f' then redis.call('SREM', KEYS[2], ARGV[1] .. ':' .. (first + i - 1)) end
    end
    delta[names[now]] = delta[names[now]] + 1
    if now == 'f' then redis.call('SADD', KEYS[2], ARGV[1] .. ':' .. (first + i - 1)) end
    if now == 's' then
      local sec = secs[i]
      per_sec[sec] = (per_sec[sec] or 0) + 1
      per_sec_bytes[sec] = (per_sec_bytes[sec] or 0) + sizes[i]
      delta.bytes_stored = delta.bytes_stored + sizes[i]
      if string.sub(flags[i], 1, 1) == '1' then delta.warnings = delta.warnings + 1 end
      if string.sub(flags[i], 2, 2) == '1' then delta.transcoded = delta.transcoded + 1 end
    end
    result[i] = now
    out[#out + 1] = lines[i]
    changed = changed + 1
  else
    result[i] = was
  end
end
if changed == 0 then return 0 end
redis.call('SETRANGE', KEYS[5], first, table.concat(result))
redis.call('APPEND', KEYS[6], ARGV[5] .. '\\n' .. table.concat(out, '\\n') .. '\\n')
for name, d in pairs(delta) do
  if d ~= 0 then redis.call('HINCRBY', KEYS[1], name, d) end
end
for sec, c in pairs(per_sec) do redis.call('HINCRBY', KEYS[3], sec, c) end
for sec, b in pairs(per_sec_bytes) do redis.call('HINCRBY', KEYS[4], sec, b) end
return changed
"""

# Put failed files of one batch back in flight. KEYS: counts, failures, state string.
# ARGV: batch id, indexes.
REOPEN = """
local n = 0
for i = 2, #ARGV do
  local idx = tonumber(ARGV[i])
  if redis.call('GETRANGE', KEYS[3], idx, idx) == 'f' then
    redis.call('SETRANGE', KEYS[3], idx, '.')
    redis.call('SREM', KEYS[2], ARGV[1] .. ':' .. idx)
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[1], 'failed', -n) end
return n
"""

# Put stored files of one batch back in flight: `retry --missing`, for files the ledger
# says are stored but the destination does not hold (verify's reconciliation). Their
# counts are taken back where RECORD added them, so that a second store counts once.
# KEYS: counts, state string, timeline, timeline_bytes.
# ARGV: groups of 5: index, epoch second it was stored, bytes, warning flag, transcoded flag.
REOPEN_STORED = """
local n, nbytes, warnings, transcoded = 0, 0, 0, 0
for i = 1, #ARGV, 5 do
  local idx = tonumber(ARGV[i])
  if redis.call('GETRANGE', KEYS[2], idx, idx) == 's' then
    redis.call('SETRANGE', KEYS[2], idx, '.')
    local sec, size = ARGV[i + 1], tonumber(ARGV[i + 2])
    -- The outcome line keeps its time to 1/100 s: 12.996 is "13.0", counted in second 12.
    if redis.call('HEXISTS', KEYS[3], sec) == 0 then sec = tostring(tonumber(sec) - 1) end
    if redis.call('HINCRBY', KEYS[3], sec, -1) <= 0 then redis.call('HDEL', KEYS[3], sec) end
    if redis.call('HINCRBY', KEYS[4], sec, -size) <= 0 then redis.call('HDEL', KEYS[4], sec) end
    n = n + 1
    nbytes = nbytes + size
    warnings = warnings + tonumber(ARGV[i + 3])
    transcoded = transcoded + tonumber(ARGV[i + 4])
  end
end
if n > 0 then
  redis.call('HINCRBY', KEYS[1], 'stored', -n)
  redis.call('HINCRBY', KEYS[1], 'bytes_stored', -nbytes)
  if warnings > 0 then redis.call('HINCRBY', KEYS[1], 'warnings', -warnings) end
  if transcoded > 0 then redis.call('HINCRBY', KEYS[1], 'transcoded', -transcoded) end
end
return n
"""

# Which URI hashes are not planned yet. KEYS: none (bucket keys are built from ARGV[1], a
# prefix sharing the job's hash tag). ARGV: prefix, then hashes. Returns 1 = new, 0 = known.
UNPLANNED = """
local out = {}
for i = 2, #ARGV do
  local h = ARGV[i]
  local bucket = ARGV[1] .. string.sub(h, 1, DIGITS)
  out[#out + 1] = 1 - redis.call('HEXISTS', bucket, string.sub(h, DIGITS + 1))
end
return out
""".replace("DIGITS", str(BUCKET_DIGITS))

# Write a batch: dedup marks, the packed files, the state string, the counters. Atomic and
# all-or-nothing: when some URI is planned already, the marks just made are undone and the
# flags returned (1 = new), so the caller writes the batch again without the known ones.
# KEYS: counts, batches, batch blob, state string, enqueued (for refusals)
# ARGV: bucket prefix, batch id, blob, initial states, number planned, enqueued flag, hashes
ADD = """
local flags, set, known = {}, {}, false
for i = 7, #ARGV do
  local h = ARGV[i]
  local bucket = ARGV[1] .. string.sub(h, 1, DIGITS)
  local field = string.sub(h, DIGITS + 1)
  local new = redis.call('HSETNX', bucket, field, ARGV[2])
  flags[#flags + 1] = new
  if new == 1 then set[#set + 1] = {bucket, field} else known = true end
end
if known then
  for _, bf in ipairs(set) do redis.call('HDEL', bf[1], bf[2]) end
  return flags
end
redis.call('SET', KEYS[3], ARGV[3])
redis.call('SET', KEYS[4], ARGV[4])
redis.call('HINCRBY', KEYS[1], 'planned', tonumber(ARGV[5]))
redis.call('SADD', KEYS[2], ARGV[2])
if ARGV[6] == '1' then redis.call('SADD', KEYS[5], ARGV[2]) end
return {}
""".replace("DIGITS", str(BUCKET_DIGITS))


# Claim SOP Instance UIDs for files about to be sent: the first file to claim a UID owns it.
# KEYS: none (bucket keys are built from ARGV[1], a prefix sharing the job's hash tag).
# ARGV: prefix, then per file its UID key (DIGITS hex digits + the binary field) and its
# file id as stored (``owner_value``). Returns, per file, the stored id of the owner when
# another file owns the UID, else '' (new, or owned by this very file: a redelivered or
# retried batch).
CLAIM = """
local out = {}
for i = 2, #ARGV, 2 do
  local h = ARGV[i]
  local bucket = ARGV[1] .. string.sub(h, 1, DIGITS)
  local field = string.sub(h, DIGITS + 1)
  local me = ARGV[i + 1]
  local owner = ''
  if redis.call('HSETNX', bucket, field, me) == 0 then
    owner = redis.call('HGET', bucket, field)
    if owner == me then owner = '' end
  end
  out[#out + 1] = owner
end
return out
""".replace("DIGITS", str(BUCKET_DIGITS))

# Hand a UID over from its owner (a file that failed) to another file. KEYS: none (the
# bucket is built from ARGV[1] as in CLAIM). ARGV: prefix, UID key, old owner, new owner.
# Returns 1 when the new file owns the UID now (also when it did already), else 0.
TAKE_OVER = """
local bucket = ARGV[1] .. string.sub(ARGV[2], 1, DIGITS)
local field = string.sub(ARGV[2], DIGITS + 1)
local now = redis.call('HGET', bucket, field)
if now == ARGV[4] then return 1 end
if now == ARGV[3] or not now then
  redis.call('HSET', bucket, field, ARGV[4])
  return 1
end
return 0
""".replace("DIGITS", str(BUCKET_DIGITS))

# Token-checked lease operations. KEYS: lease key. ARGV: token, ttl ms.
REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: Delivery counters outlive any sane batch, then go away by themselves.
