package main

import (
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/client"
)

// completeDeviceService completes the arguments of connect (services
// too) and ping: the names of the devices paired in the client's home
// (--home, else $BURROW_HOME, else the default), then the services the
// named device's pairing grants. It reads the home only: no network, no
// new identity.
func completeDeviceService(g *globals, withService bool) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		dir, err := g.homeDir()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		home := client.Home{Dir: dir}
		var out []string
		switch {
		case len(args) == 0:
			devs, err := home.Devices()
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			for _, d := range devs {
				out = append(out, d.Name)
			}
		case len(args) == 1 && withService:
			kd, err := home.Device(args[0])
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			out = slices.Clone(kd.Services)
		}
		out = slices.DeleteFunc(out, func(s string) bool { return !strings.HasPrefix(s, toComplete) })
		slices.Sort(out)
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
