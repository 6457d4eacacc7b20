-- PacketCloud shim dissector for Wireshark / tshark (Lua 5.2+, Wireshark >= 3.0).
--
-- Dissects both PacketCloud shims (docs/protocol.md §3-§4): form 1 (circuit, 16 bytes) and
-- form 2 (service ID, 9 bytes), carried directly over IPv4 protocol 253 or in UDP on port
-- 6253 (either port), then hands the payload to the dissector of the shim's next protocol.
--
-- Usage:
--   tshark -X lua_script:contrib/wireshark/packetcloud.lua -r capture.pcap -Y packetcloud
--   wireshark -X lua_script:contrib/wireshark/packetcloud.lua capture.pcap
-- or copy this file to ~/.local/lib/wireshark/plugins/ (then it loads by itself).
--
-- Running as root: Debian's /usr/share/wireshark/init.lua sets
-- run_user_scripts_when_superuser = true, so -X lua_script works as root. Scripts are refused
-- as root only where a distribution sets it false (then run tshark as a normal user, or with
-- a copy of init.lua that sets it true via WIRESHARK_DATA_DIR). Automated runs should point
-- HOME and WIRESHARK_CONFIG_DIR at empty directories so that no personal profile changes the
-- output; tests/wire/test_wireshark.py does that and runs as root in CI.
--
-- Fields (display filters / tshark -e): packetcloud.version, packetcloud.form,
-- packetcloud.next_proto, packetcloud.hop_limit, packetcloud.metadata, packetcloud.label,
-- packetcloud.orig_src, packetcloud.service_id, packetcloud.check, packetcloud.check_ok.
-- The form-2 check (unkeyed BLAKE2s-24) is always verified; the form-1 check (keyed
-- BLAKE2s-32 over shim bytes 0..11 || IPv4 destination) is verified when a hop key is set:
--   tshark -o packetcloud.hop_key:000102030405060708090a0b0c0d0e0f ...
-- Preferences: packetcloud.ip_proto (253), packetcloud.udp_port (6253), packetcloud.hop_key.

local bit = bit32

local pc = Proto("packetcloud", "PacketCloud shim")

local FORMS = { [1] = "circuit (source-controlled)", [2] = "service ID" }

local f = pc.fields
f.version = ProtoField.uint8("packetcloud.version", "Version", base.DEC, nil, 0xF0)
f.form = ProtoField.uint8("packetcloud.form", "Form", base.DEC, FORMS, 0x0F)
f.next_proto = ProtoField.uint8("packetcloud.next_proto", "Next protocol", base.DEC)
f.hop_limit = ProtoField.uint8("packetcloud.hop_limit", "Hop limit", base.DEC)
f.metadata = ProtoField.uint8("packetcloud.metadata", "Metadata", base.HEX)
f.label = ProtoField.uint32("packetcloud.label", "Circuit label", base.HEX)
f.orig_src = ProtoField.ipv4("packetcloud.orig_src", "Original source")
f.service_id = ProtoField.uint24("packetcloud.service_id", "Service ID", base.HEX)
f.check = ProtoField.bytes("packetcloud.check", "Check")
f.check_ok = ProtoField.bool("packetcloud.check_ok", "Check verifies")

local ef_bad_check = ProtoExpert.new("packetcloud.bad_check", "PacketCloud check does not verify",
    expert.group.CHECKSUM, expert.severity.WARN)
local ef_bad_shim = ProtoExpert.new("packetcloud.bad_shim", "Malformed PacketCloud shim",
    expert.group.MALFORMED, expert.severity.ERROR)
local ef_bad_payload = ProtoExpert.new("packetcloud.bad_payload",
    "Malformed payload after the PacketCloud shim", expert.group.MALFORMED, expert.severity.WARN)
pc.experts = { ef_bad_check, ef_bad_shim, ef_bad_payload }

pc.prefs.ip_proto = Pref.uint("IPv4 protocol number", 253, "IPv4 protocol of the shim (RFC 3692)")
pc.prefs.udp_port = Pref.uint("UDP port", 6253, "UDP port of the UDP encapsulation")
pc.prefs.hop_key = Pref.string("Form-1 hop key (hex)", "",
    "16-32 byte hop key; when set, form-1 checks are verified under it")

-- ---------------------------------------------------------------------------------------------
-- BLAKE2s (RFC 7693), enough for short messages: keyed or not, any digest length 1..32.

local IV = { 0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
             0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19 }
local SIGMA = {
    { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 },
    { 14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3 },
    { 11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4 },
    { 7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8 },
    { 9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13 },
    { 2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9 },
    { 12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11 },
    { 13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10 },
    { 6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5 },
    { 10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0 },
}

local function add(a, b) return (a + b) % 0x100000000 end

local function compress(h, block, t, last)
    local m = {}
    for i = 0, 15 do
        local o = i * 4 + 1
        m[i] = block[o] + block[o + 1] * 0x100 + block[o + 2] * 0x10000 + block[o + 3] * 0x1000000
    end
    local v = {}
    for i = 0, 7 do v[i] = h[i]; v[i + 8] = IV[i + 1] end
    v[12] = bit.bxor(v[12], t % 0x100000000)
    v[13] = bit.bxor(v[13], math.floor(t / 0x100000000))
    if last then v[14] = bit.bnot(v[14]) end
    local function g(a, b, c, d, x, y)
        v[a] = add(add(v[a], v[b]), x); v[d] = bit.rrotate(bit.bxor(v[d], v[a]), 16)
        v[c] = add(v[c], v[d]);         v[b] = bit.rrotate(bit.bxor(v[b], v[c]), 12)
        v[a] = add(add(v[a], v[b]), y); v[d] = bit.rrotate(bit.bxor(v[d], v[a]), 8)
        v[c] = add(v[c], v[d]);         v[b] = bit.rrotate(bit.bxor(v[b], v[c]), 7)
    end
    for r = 1, 10 do
        local s = SIGMA[r]
        g(0, 4, 8, 12, m[s[1]], m[s[2]]);   g(1, 5, 9, 13, m[s[3]], m[s[4]])
        g(2, 6, 10, 14, m[s[5]], m[s[6]]);  g(3, 7, 11, 15, m[s[7]], m[s[8]])
        g(0, 5, 10, 15, m[s[9]], m[s[10]]); g(1, 6, 11, 12, m[s[11]], m[s[12]])
        g(2, 7, 8, 13, m[s[13]], m[s[14]]); g(3, 4, 9, 14, m[s[15]], m[s[16]])
    end
    for i = 0, 7 do h[i] = bit.bxor(h[i], v[i], v[i + 8]) end
end

-- blake2s(data, key, outlen): data and key are Lua arrays of byte values; returns a byte array.
local function blake2s(data, key, outlen)
    local h = {}
    for i = 0, 7 do h[i] = IV[i + 1] end
    h[0] = bit.bxor(h[0], 0x01010000, bit.lshift(#key, 8), outlen)
    local input = {}
    if #key > 0 then
        for i = 1, 64 do input[i] = key[i] or 0 end
    end
    for i = 1, #data do input[#input + 1] = data[i] end
    local n = #input
    local t, pos = 0, 1
    while n - pos + 1 > 64 do
        local block = {}
        for i = 0, 63 do block[i + 1] = input[pos + i] end
        t = t + 64
        compress(h, block, t, false)
        pos = pos + 64
    end
    local block = {}
    for i = 0, 63 do block[i + 1] = input[pos + i] or 0 end
    t = t + (n - pos + 1)
    compress(h, block, t, true)
    local out = {}
    for i = 0, outlen - 1 do
        out[i + 1] = bit.band(bit.rshift(h[math.floor(i / 4)], 8 * (i % 4)), 0xFF)
    end
    return out
end

local function tvb_bytes(range)
    local out = {}
    for i = 0, range:len() - 1 do out[i + 1] = range(i, 1):uint() end
    return out
end

local function hex_key(text)
    local key = {}
    text = (text or ""):gsub("[%s:]", "")
    if #text % 2 ~= 0 then return nil end
    for i = 1, #text, 2 do
        local byte = tonumber(text:sub(i, i + 1), 16)
        if byte == nil then return nil end
        key[#key + 1] = byte
    end
    if #key < 16 or #key > 32 then return nil end
    return key
end

local function same(a, b)
    if #a ~= #b then return false end
    for i = 1, #a do if a[i] ~= b[i] then return false end end
    return true
end

-- ---------------------------------------------------------------------------------------------

local ip_proto_table = DissectorTable.get("ip.proto")
local ip_dst_field = Field.new("ip.dst")

function pc.dissector(tvb, pinfo, tree)
    if tvb:len() < 2 then return 0 end
    local vf = tvb(0, 1):uint()
    local version, form = bit.rshift(vf, 4), bit.band(vf, 0x0F)
    local len = (form == 1 and 16) or (form == 2 and 9) or nil
    pinfo.cols.protocol = "PacketCloud"
    local subtree = tree:add(pc, tvb(0, math.min(tvb:len(), len or 2)))
    subtree:add(f.version, tvb(0, 1))
    subtree:add(f.form, tvb(0, 1))
    subtree:add(f.next_proto, tvb(1, 1))
    if version ~= 1 or len == nil then
        subtree:add_proto_expert_info(ef_bad_shim, "unknown version " .. version .. " / form " .. form)
        return tvb:len()
    end
    if tvb:len() < len then
        subtree:add_proto_expert_info(ef_bad_shim, "truncated: form " .. form .. " needs " .. len .. " bytes")
        return tvb:len()
    end
    local next_proto = tvb(1, 1):uint()
    local ok
    if form == 1 then
        subtree:add(f.hop_limit, tvb(2, 1))
        subtree:add(f.metadata, tvb(3, 1))
        subtree:add(f.label, tvb(4, 4))
        subtree:add(f.orig_src, tvb(8, 4))
        subtree:add(f.check, tvb(12, 4))
        local key = hex_key(pc.prefs.hop_key)
        local dst = ip_dst_field()
        if key ~= nil and dst ~= nil then
            local data = tvb_bytes(tvb(0, 12))
            local d = dst.range
            for i = 0, 3 do data[#data + 1] = d(i, 1):uint() end
            ok = same(blake2s(data, key, 4), tvb_bytes(tvb(12, 4)))
        end
        pinfo.cols.info = string.format("PacketCloud circuit label=0x%08x md=0x%02x hops=%d",
            tvb(4, 4):uint(), tvb(3, 1):uint(), tvb(2, 1):uint())
    else
        subtree:add(f.service_id, tvb(2, 3))
        subtree:add(f.metadata, tvb(5, 1))
        subtree:add(f.check, tvb(6, 3))
        ok = same(blake2s(tvb_bytes(tvb(0, 6)), {}, 3), tvb_bytes(tvb(6, 3)))
        pinfo.cols.info = string.format("PacketCloud service sid=0x%06x md=0x%02x",
            tvb(2, 3):uint(), tvb(5, 1):uint())
    end
    if ok ~= nil then
        local item = subtree:add(f.check_ok, ok)
        item:set_generated()
        if not ok then item:add_proto_expert_info(ef_bad_check) end
    end
    if tvb:len() > len then
        local payload = tvb(len):tvb()
        -- a malformed inner packet raises inside the next dissector: report it, do not fail
        local ok_call, handled = pcall(ip_proto_table.try, ip_proto_table, next_proto,
            payload, pinfo, tree)
        if not ok_call then
            subtree:add_proto_expert_info(ef_bad_payload, tostring(handled))
        elseif not handled then
            Dissector.get("data"):call(payload, pinfo, tree)
        end
    end
    return tvb:len()
end

local registered = {}

local function register()
    local udp = DissectorTable.get("udp.port")
    if registered.ip then ip_proto_table:remove(registered.ip, pc) end
    if registered.udp then udp:remove(registered.udp, pc) end
    registered.ip, registered.udp = pc.prefs.ip_proto, pc.prefs.udp_port
    ip_proto_table:add(registered.ip, pc)
    udp:add(registered.udp, pc)
end

function pc.prefs_changed() register() end

register()
