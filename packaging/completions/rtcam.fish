# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_rtcam_global_optspecs
    string join \n c/config= h/help V/version
end

function __fish_rtcam_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_rtcam_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_rtcam_using_subcommand
    set -l cmd (__fish_rtcam_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c rtcam -n "__fish_rtcam_needs_command" -s c -l config -d 'Configuration file (default: /etc/rtcam/rtcam.toml if present, else built-in demo defaults)' -r -F
complete -c rtcam -n "__fish_rtcam_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c rtcam -n "__fish_rtcam_needs_command" -s V -l version -d 'Print version'
complete -c rtcam -n "__fish_rtcam_needs_command" -f -a "run" -d 'Run the camera (the default)'
complete -c rtcam -n "__fish_rtcam_needs_command" -f -a "config" -d 'Configuration helpers'
complete -c rtcam -n "__fish_rtcam_needs_command" -f -a "devices" -d 'List every capture device: driver, formats with sizes and frame rates, controls'
complete -c rtcam -n "__fish_rtcam_needs_command" -f -a "controls" -d 'Show or set camera controls (brightness, exposure, focus …)'
complete -c rtcam -n "__fish_rtcam_needs_command" -f -a "check" -d 'Run the configured camera and encoder headless for N frames and report how it went'
complete -c rtcam -n "__fish_rtcam_needs_command" -f -a "token" -d 'Print a signed viewer token (needs [auth] secret in the configuration)'
complete -c rtcam -n "__fish_rtcam_needs_command" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c rtcam -n "__fish_rtcam_needs_command" -f -a "man" -d 'Print the manual page (roff), e.g. `rtcam man | man -l -`; with a directory, write it and one page per subcommand there (rtcam.1, rtcam-devices.1 …)'
complete -c rtcam -n "__fish_rtcam_needs_command" -f -a "passwd" -d 'Add a broker user of the embedded broker, or change its password, in a users file (`[mqtt] users_file`; mosquitto\'s format). Reads the password from standard input'
complete -c rtcam -n "__fish_rtcam_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c rtcam -n "__fish_rtcam_using_subcommand run" -s c -l config -d 'Configuration file (default: /etc/rtcam/rtcam.toml if present, else built-in demo defaults)' -r -F
complete -c rtcam -n "__fish_rtcam_using_subcommand run" -s h -l help -d 'Print help'
complete -c rtcam -n "__fish_rtcam_using_subcommand config; and not __fish_seen_subcommand_from check example help" -s c -l config -d 'Configuration file (default: /etc/rtcam/rtcam.toml if present, else built-in demo defaults)' -r -F
complete -c rtcam -n "__fish_rtcam_using_subcommand config; and not __fish_seen_subcommand_from check example help" -s h -l help -d 'Print help'
complete -c rtcam -n "__fish_rtcam_using_subcommand config; and not __fish_seen_subcommand_from check example help" -f -a "check" -d 'Check a configuration file and report the first problem with its line and key'
complete -c rtcam -n "__fish_rtcam_using_subcommand config; and not __fish_seen_subcommand_from check example help" -f -a "example" -d 'Print the documented example configuration'
complete -c rtcam -n "__fish_rtcam_using_subcommand config; and not __fish_seen_subcommand_from check example help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c rtcam -n "__fish_rtcam_using_subcommand config; and __fish_seen_subcommand_from check" -s c -l config -d 'Configuration file (default: /etc/rtcam/rtcam.toml if present, else built-in demo defaults)' -r -F
complete -c rtcam -n "__fish_rtcam_using_subcommand config; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c rtcam -n "__fish_rtcam_using_subcommand config; and __fish_seen_subcommand_from example" -s c -l config -d 'Configuration file (default: /etc/rtcam/rtcam.toml if present, else built-in demo defaults)' -r -F
complete -c rtcam -n "__fish_rtcam_using_subcommand config; and __fish_seen_subcommand_from example" -l commented -d 'Every setting commented out, as the package installs /etc/rtcam/rtcam.toml: the built-in defaults apply, and each key is there to uncomment'
complete -c rtcam -n "__fish_rtcam_using_subcommand config; and __fish_seen_subcommand_from example" -s h -l help -d 'Print help'
complete -c rtcam -n "__fish_rtcam_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "check" -d 'Check a configuration file and report the first problem with its line and key'
complete -c rtcam -n "__fish_rtcam_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "example" -d 'Print the documented example configuration'
complete -c rtcam -n "__fish_rtcam_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c rtcam -n "__fish_rtcam_using_subcommand devices" -s c -l config -d 'Configuration file (default: /etc/rtcam/rtcam.toml if present, else built-in demo defaults)' -r -F
complete -c rtcam -n "__fish_rtcam_using_subcommand devices" -l json -d 'JSON for scripts'
complete -c rtcam -n "__fish_rtcam_using_subcommand devices" -s h -l help -d 'Print help'
complete -c rtcam -n "__fish_rtcam_using_subcommand controls" -l device -d 'V4L2 node (default: the configured camera, else the first)' -r -F
complete -c rtcam -n "__fish_rtcam_using_subcommand controls" -l set -d 'Set a control, e.g. --set brightness=140 (repeatable, applied in order)' -r
complete -c rtcam -n "__fish_rtcam_using_subcommand controls" -l get -d 'Print one control as name=value (repeatable)' -r
complete -c rtcam -n "__fish_rtcam_using_subcommand controls" -s c -l config -d 'Configuration file (default: /etc/rtcam/rtcam.toml if present, else built-in demo defaults)' -r -F
complete -c rtcam -n "__fish_rtcam_using_subcommand controls" -l json -d 'JSON for scripts'
complete -c rtcam -n "__fish_rtcam_using_subcommand controls" -s h -l help -d 'Print help'
complete -c rtcam -n "__fish_rtcam_using_subcommand check" -l frames -r
complete -c rtcam -n "__fish_rtcam_using_subcommand check" -l timeout -d 'Give up after this many seconds' -r
complete -c rtcam -n "__fish_rtcam_using_subcommand check" -s c -l config -d 'Configuration file (default: /etc/rtcam/rtcam.toml if present, else built-in demo defaults)' -r -F
complete -c rtcam -n "__fish_rtcam_using_subcommand check" -l progress -d 'Print a progress line (frames, camera state) four times a second'
complete -c rtcam -n "__fish_rtcam_using_subcommand check" -s h -l help -d 'Print help'
complete -c rtcam -n "__fish_rtcam_using_subcommand token" -l ttl -d 'How long it is valid: 90s, 30m, 1h, 7d' -r
complete -c rtcam -n "__fish_rtcam_using_subcommand token" -l rights -l right -l scope -d 'What it allows, comma- or space-separated: view, talk (be heard on the board), control (change the camera from the page), metrics' -r
complete -c rtcam -n "__fish_rtcam_using_subcommand token" -l sub -d 'Who holds it (a name for the logs, which never show the token)' -r
complete -c rtcam -n "__fish_rtcam_using_subcommand token" -s c -l config -d 'Configuration file (default: /etc/rtcam/rtcam.toml if present, else built-in demo defaults)' -r -F
complete -c rtcam -n "__fish_rtcam_using_subcommand token" -s h -l help -d 'Print help'
complete -c rtcam -n "__fish_rtcam_using_subcommand completions" -s c -l config -d 'Configuration file (default: /etc/rtcam/rtcam.toml if present, else built-in demo defaults)' -r -F
complete -c rtcam -n "__fish_rtcam_using_subcommand completions" -s h -l help -d 'Print help'
complete -c rtcam -n "__fish_rtcam_using_subcommand man" -s c -l config -d 'Configuration file (default: /etc/rtcam/rtcam.toml if present, else built-in demo defaults)' -r -F
complete -c rtcam -n "__fish_rtcam_using_subcommand man" -s h -l help -d 'Print help'
complete -c rtcam -n "__fish_rtcam_using_subcommand passwd" -s c -l config -d 'Configuration file (default: /etc/rtcam/rtcam.toml if present, else built-in demo defaults)' -r -F
complete -c rtcam -n "__fish_rtcam_using_subcommand passwd" -s h -l help -d 'Print help'
complete -c rtcam -n "__fish_rtcam_using_subcommand help; and not __fish_seen_subcommand_from run config devices controls check token completions man passwd help" -f -a "run" -d 'Run the camera (the default)'
complete -c rtcam -n "__fish_rtcam_using_subcommand help; and not __fish_seen_subcommand_from run config devices controls check token completions man passwd help" -f -a "config" -d 'Configuration helpers'
complete -c rtcam -n "__fish_rtcam_using_subcommand help; and not __fish_seen_subcommand_from run config devices controls check token completions man passwd help" -f -a "devices" -d 'List every capture device: driver, formats with sizes and frame rates, controls'
complete -c rtcam -n "__fish_rtcam_using_subcommand help; and not __fish_seen_subcommand_from run config devices controls check token completions man passwd help" -f -a "controls" -d 'Show or set camera controls (brightness, exposure, focus …)'
complete -c rtcam -n "__fish_rtcam_using_subcommand help; and not __fish_seen_subcommand_from run config devices controls check token completions man passwd help" -f -a "check" -d 'Run the configured camera and encoder headless for N frames and report how it went'
complete -c rtcam -n "__fish_rtcam_using_subcommand help; and not __fish_seen_subcommand_from run config devices controls check token completions man passwd help" -f -a "token" -d 'Print a signed viewer token (needs [auth] secret in the configuration)'
complete -c rtcam -n "__fish_rtcam_using_subcommand help; and not __fish_seen_subcommand_from run config devices controls check token completions man passwd help" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c rtcam -n "__fish_rtcam_using_subcommand help; and not __fish_seen_subcommand_from run config devices controls check token completions man passwd help" -f -a "man" -d 'Print the manual page (roff), e.g. `rtcam man | man -l -`; with a directory, write it and one page per subcommand there (rtcam.1, rtcam-devices.1 …)'
complete -c rtcam -n "__fish_rtcam_using_subcommand help; and not __fish_seen_subcommand_from run config devices controls check token completions man passwd help" -f -a "passwd" -d 'Add a broker user of the embedded broker, or change its password, in a users file (`[mqtt] users_file`; mosquitto\'s format). Reads the password from standard input'
complete -c rtcam -n "__fish_rtcam_using_subcommand help; and not __fish_seen_subcommand_from run config devices controls check token completions man passwd help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c rtcam -n "__fish_rtcam_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "check" -d 'Check a configuration file and report the first problem with its line and key'
complete -c rtcam -n "__fish_rtcam_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "example" -d 'Print the documented example configuration'
