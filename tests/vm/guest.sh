#!/bin/sh
# The vivid test, run inside the VM by /init with the real rtcam binary and the kernel's vivid
# driver. Every result is one line, "RTCAM-VM: PASS name" or "RTCAM-VM: FAIL name: why", and the
# host test decides on those lines. Every wait is bounded (wait_until) and the whole script runs
# under `timeout` in /init.

export GST_PLUGIN_SYSTEM_PATH="$(cat /etc/gst-plugin-dir)"
export GST_REGISTRY=/tmp/gst-registry.bin
# No plugin scanner helper in the guest: scan in-process.
export GST_REGISTRY_FORK=no
export RTCAM_LOG=${RTCAM_LOG:-info,rumqttd=off,webrtc=warn,rtc=warn}
export PATH=/bin:/usr/bin
export HOME=/tmp

# Each result carries the guest's uptime, to see where the time goes on a slow machine.
up() { cut -d' ' -f1 /proc/uptime; }
pass() { echo "RTCAM-VM: PASS $* [t=$(up)s]"; }
fail() { echo "RTCAM-VM: FAIL $* [t=$(up)s]"; }

# wait_until SECONDS COMMAND...: true as soon as COMMAND succeeds, false after SECONDS.
wait_until() {
    n=$(($1 * 5)); shift
    while [ "$n" -gt 0 ]; do
        if eval "$@"; then return 0; fi
        sleep 0.2
        n=$((n - 1))
    done
    return 1
}

config() { # format width height
    cat > "/tmp/$1-$2x$3.toml" <<EOF
[source]
kind = "v4l2"
device = "/dev/video0"
format = "$1"
width = $2
height = $3
fps = 30

[source.controls]
contrast = 140

[encoder]
element = "x264enc"
bitrate_kbps = 400
EOF
    echo "/tmp/$1-$2x$3.toml"
}

if wait_until 15 '[ -e /dev/video0 ]'; then pass "vivid-loaded"; else fail "vivid-loaded: no /dev/video0"; exit 1; fi

# 1. Devices: vivid and its formats, as JSON for scripts and as text for people.
if rtcam devices --json > /tmp/devices.json 2> /tmp/devices.err \
    && grep -q '"driver": "vivid"' /tmp/devices.json \
    && grep -q '"fourcc": "YUYV"' /tmp/devices.json \
    && grep -q '"fourcc": "NV12"' /tmp/devices.json \
    && grep -q '"width": 640' /tmp/devices.json \
    && grep -q '"name": "brightness"' /tmp/devices.json; then
    pass "devices-json"
else
    fail "devices-json"; cat /tmp/devices.json /tmp/devices.err | head -60
fi
rtcam devices | head -40

# 2. Capture through rtcam's own pipeline (V4L2 → x264 → frames), two formats and sizes.
check() { # name format width height
    cfg=$(config "$2" "$3" "$4")
    if rtcam --config "$cfg" check --frames 30 --timeout 40 > "/tmp/$1.out" 2> "/tmp/$1.err" \
        && grep -q "frames: *30" "/tmp/$1.out"; then
        pass "$1"
    else
        fail "$1"; cat "/tmp/$1.err" | tail -20
    fi
    cat "/tmp/$1.out"
}
check capture-yuyv-640x480 yuyv 640 480
check capture-nv12-640x360 nv12 640 360

# What the camera cannot do is an error naming what it can (vivid has no MJPEG, and YUYV only
# at its listed sizes).
refused() { # name format width height expected-text
    cfg=$(config "$2" "$3" "$4")
    if rtcam --config "$cfg" check --frames 5 --timeout 2 > "/tmp/$1.out" 2> "/tmp/$1.err"; then
        fail "$1: streamed although the camera cannot do it"
    elif grep -q "$5" "/tmp/$1.err"; then
        pass "$1"
    else
        fail "$1: no clear error"; tail -5 "/tmp/$1.err"
    fi
}
refused format-not-offered mjpeg 640 480 "does not offer MJPG; it offers YUYV, "
refused size-not-offered yuyv 1000 700 "does not offer YUYV at 1000x700; YUYV sizes: 320x180, 640x360, 640x480"

# 3. Controls: set brightness, read it back; the config's contrast was applied by check above.
if rtcam controls --device /dev/video0 --set brightness=200 > /tmp/ctl.out 2>&1 \
    && [ "$(rtcam controls --device /dev/video0 --get brightness)" = "brightness=200" ]; then
    pass "control-set-brightness"
else
    fail "control-set-brightness"; cat /tmp/ctl.out; rtcam controls --device /dev/video0 --get brightness
fi
if [ "$(rtcam controls --device /dev/video0 --get contrast)" = "contrast=140" ]; then
    pass "config-controls-applied"
else
    fail "config-controls-applied: $(rtcam controls --device /dev/video0 --get contrast 2>&1)"
fi
if rtcam controls --device /dev/video0 --set no_such_control=1 > /tmp/bad.out 2>&1; then
    fail "control-unknown-refused"
elif grep -q brightness /tmp/bad.out; then
    pass "control-unknown-refused"
else
    fail "control-unknown-refused: message does not name what exists: $(cat /tmp/bad.out)"
fi

# 4. Hot-unplug while streaming, both ways; the same frame stream must keep rising.
cfg=$(config yuyv 640 480)
rtcam --config "$cfg" check --frames 100000 --timeout 90 --progress > /tmp/p.log 2> /tmp/p.err &
pid=$!
frames() { tail -n 1 /tmp/p.log | sed -n 's/.*frames=\([0-9]*\).*/\1/p'; }
at_least() { f=$(frames); [ -n "$f" ] && [ "$f" -ge "$1" ]; }
# since LINE PATTERN: PATTERN appears in the progress log after line LINE.
since() { tail -n +"$(($1 + 1))" /tmp/p.log | grep -q "$2"; }
lines() { wc -l < /tmp/p.log; }

unplug() { # name command-to-unplug command-to-replug
    mark=$(lines)
    eval "$2"
    if ! wait_until 15 'since $mark camera=lost'; then
        fail "$1: camera never reported lost"; tail -5 /tmp/p.log; tail -5 /tmp/p.err; return
    fi
    before=$(frames)
    [ -n "$3" ] && eval "$3"
    if wait_until 30 'at_least $((before + 30))' && tail -n 1 /tmp/p.log | grep -q camera=ok; then
        pass "$1 (frames $before -> $(frames))"
    else
        fail "$1: frames did not resume ($before -> $(frames))"; tail -5 /tmp/p.log; tail -10 /tmp/p.err
    fi
}

if wait_until 30 'at_least 30'; then
    pass "stream-started"
    # vivid's Disconnect button: the streaming fd gets ENODEV; vivid reconnects once rtcam
    # closes it.
    unplug "unplug-disconnect-control" "rtcam controls --device /dev/video0 --set disconnect=1 >/dev/null" ""
    # A real removal: the node disappears, stays away a moment, and comes back.
    unplug "unplug-unbind" \
        "echo vivid.0 > /sys/bus/platform/drivers/vivid/unbind" \
        "wait_until 5 '[ ! -e /dev/video0 ]'; sleep 1; echo vivid.0 > /sys/bus/platform/drivers/vivid/bind"
else
    fail "stream-started: $(tail -n 1 /tmp/p.log)"; tail -20 /tmp/p.err
fi
grep -E "camera|restart" /tmp/p.err | head -20
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null

# 5. The agent itself: R/status follows the camera through an unplug, and the control plane's
# controls/set commands reach the real driver. The clients speak MQTT 5 on the broker's v5 port,
# as rtcam itself does.
# Commands need a broker user of the embedded broker (docs/security.md).
echo operator-pass | rtcam passwd /tmp/mqtt-users operator > /dev/null
cat > /tmp/agent.toml <<EOF
[device]
id = "vm"

[mqtt]
embedded_listen = "127.0.0.1:1883"
embedded_listen_v5 = "127.0.0.1:1884"
users_file = "/tmp/mqtt-users"

[http]
listen = "127.0.0.1:8080"
https_listen = ""

[source]
kind = "v4l2"
device = "/dev/video0"
format = "yuyv"
width = 640
height = 480
fps = 30
# No viewer in the guest: keep the camera open so unplugs show in R/status.
always_on = true

[encoder]
element = "x264enc"
bitrate_kbps = 400

[webrtc]
udp_addrs = ["127.0.0.1"]
EOF
rtcam --config /tmp/agent.toml > /tmp/agent.out 2> /tmp/agent.err &
apid=$!
status_ok() { grep 'rtcam/vm/status' /tmp/mqtt.log | tail -n 1 | grep -q '"camera":"ok"'; }
reply_has() { grep "\"id\":\"$1\"" /tmp/mqtt.log | grep -q "$2"; }
if wait_until 30 'grep -q "rtcam is running" /tmp/agent.out'; then
    mosquitto_sub -V 5 -h 127.0.0.1 -p 1884 -i vm-probe -u operator -P operator-pass -v \
        -t rtcam/vm/status -t rtcam/vm/command/reply > /tmp/mqtt.log 2>&1 &
    spid=$!
    if wait_until 20 status_ok; then pass "status-camera-ok"; else fail "status-camera-ok"; tail -3 /tmp/mqtt.log; fi
    rtcam controls --device /dev/video0 --set disconnect=1 > /dev/null
    if wait_until 15 'grep -q "\"camera\":\"lost\"" /tmp/mqtt.log'; then
        if wait_until 30 status_ok; then
            pass "status-camera-lost-then-ok"
        else
            fail "status-camera-lost-then-ok: never ok again"; tail -3 /tmp/mqtt.log; tail -5 /tmp/agent.err
        fi
    else
        fail "status-camera-lost-then-ok: never lost"; tail -3 /tmp/mqtt.log; tail -5 /tmp/agent.err
    fi
    mosquitto_pub -V 5 -h 127.0.0.1 -p 1884 -i vm-pub -u operator -P operator-pass -t rtcam/vm/command \
        -m '{"id":"b1","command":"set","args":{"controls":{"brightness":77}}}'
    mosquitto_pub -V 5 -h 127.0.0.1 -p 1884 -i vm-pub -u operator -P operator-pass -t rtcam/vm/command -m '{"id":"c1","command":"controls"}'
    if wait_until 10 'reply_has b1 "\"brightness\":77"' \
        && [ "$(rtcam controls --device /dev/video0 --get brightness)" = "brightness=77" ]; then
        pass "command-set-control"
    else
        fail "command-set-control"; grep command/reply /tmp/mqtt.log | tail -3
    fi
    if wait_until 10 'reply_has c1 "\"name\":\"brightness\""'; then
        pass "command-controls"
    else
        fail "command-controls"; grep command/reply /tmp/mqtt.log | tail -3
    fi
    kill "$spid" 2>/dev/null
else
    fail "agent-started"; tail -20 /tmp/agent.err
fi
kill "$apid" 2>/dev/null
wait_until 10 '! kill -0 $apid 2>/dev/null' || fail "agent-stopped: still running 10 s after SIGTERM"
# 6. Orientation by the camera: rotation = 180 is both V4L2 flips, set when the camera opens.
cat > /tmp/turned.toml <<EOF
[source]
kind = "v4l2"
device = "/dev/video0"
format = "yuyv"
width = 640
height = 480
rotation = 180

[encoder]
element = "x264enc"
bitrate_kbps = 400
EOF
if rtcam --config /tmp/turned.toml check --frames 10 --timeout 30 > /tmp/turned.out 2> /tmp/turned.err \
    && [ "$(rtcam controls --device /dev/video0 --get horizontal_flip)" = "horizontal_flip=1" ] \
    && [ "$(rtcam controls --device /dev/video0 --get vertical_flip)" = "vertical_flip=1" ] \
    && ! grep -q videoflip /tmp/turned.err; then
    pass "rotation-by-camera-flips"
else
    fail "rotation-by-camera-flips"; rtcam controls --device /dev/video0 --get horizontal_flip --get vertical_flip; tail -5 /tmp/turned.err
fi

# 7. kind = "auto" among nodes it must skip: vivid again as three instances, a metadata capture
# node (/dev/video0), a video output node (/dev/video1), then the camera (/dev/video2). Debian's
# kernel has neither vim2m nor vicodec, so memory-to-memory nodes are left to the unit tests.
rmmod vivid && insmod /modules/vivid.ko n_devs=3 node_types=0x20000,0x100,0x1
if wait_until 15 '[ -e /dev/video2 ]'; then
    rtcam devices > /tmp/auto-devices.txt 2>&1
    rtcam devices --json > /tmp/auto-devices.json 2>&1
    if grep -A1 '^/dev/video0:' /tmp/auto-devices.txt | grep -q 'auto: skipped, a metadata capture node' \
        && grep -A1 '^/dev/video1:' /tmp/auto-devices.txt | grep -q 'auto: skipped, not a video capture device' \
        && grep -A1 '^/dev/video2:' /tmp/auto-devices.txt | grep -q 'auto: chosen' \
        && grep -q '"auto": "chosen"' /tmp/auto-devices.json; then
        pass "auto-devices-marks-choice"
    else
        fail "auto-devices-marks-choice"; head -30 /tmp/auto-devices.txt
    fi
    cat > /tmp/auto.toml <<EOF
[source]
kind = "auto"
format = "yuyv"
width = 640
height = 480

[encoder]
element = "x264enc"
bitrate_kbps = 400
EOF
    if rtcam --config /tmp/auto.toml check --frames 30 --timeout 40 > /tmp/auto.out 2> /tmp/auto.err \
        && grep -q "frames: *30" /tmp/auto.out \
        && grep -q "device: *\/dev\/video2 " /tmp/auto.out; then
        pass "auto-streams-from-camera"
    else
        fail "auto-streams-from-camera"; tail -12 /tmp/auto.err; cat /tmp/auto.out
    fi
    grep "camera choice" /tmp/auto.err
else
    fail "auto-vivid-reloaded: no /dev/video2"; ls /dev/video*
fi
echo "RTCAM-VM: DONE"
