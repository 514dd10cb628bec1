// cert-manager's controller for the tests: the real controllers from cert-manager's public
// packages, run as its own binary runs them (cmd/controller/app), without the parts the tests
// have no use for (ACME, Vault, Venafi, ingress and gateway shims, leader election). Its real
// main is a nested module the Go module proxy cannot serve, so this is the few lines of main
// that stand in for it.
//
//	cert-manager-controller --kubeconfig FILE [--cluster-resource-namespace cert-manager]
//	                        [--controllers a,b,...] [--workers 5]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"

	"k8s.io/klog/v2"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// The controllers, registered by their init functions.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificatesigningrequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificatesigningrequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	// The issuer types those controllers can set up (ClusterIssuer spec.ca, spec.selfSigned).
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

// What the seed's flow needs: self-signed and CA (Cluster)Issuers, Certificates for the CAs,
// and the CertificateSigningRequest signers (ExperimentalCertificateSigningRequestControllers).
const defaultControllers = "clusterissuers,issuers," +
	"certificates-trigger,certificates-issuing,certificates-key-manager,certificates-request-manager," +
	"certificates-readiness,certificates-revision-manager," +
	"certificaterequests-approver,certificaterequests-issuer-selfsigned,certificaterequests-issuer-ca," +
	"certificatesigningrequests-issuer-ca,certificatesigningrequests-issuer-selfsigned"

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "cert-manager-controller: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster (required)")
	namespace := flag.String("cluster-resource-namespace", "cert-manager", "where ClusterIssuers' secrets live")
	controllers := flag.String("controllers", defaultControllers, "comma-separated controllers to run")
	workers := flag.Int("workers", 5, "workers per controller")
	klog.InitFlags(nil)
	flag.Parse()
	if *kubeconfig == "" {
		return fmt.Errorf("--kubeconfig is required")
	}

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	ctx = logf.NewContext(ctx, logf.Log, "cert-manager-controller")

	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		Kubeconfig:         *kubeconfig,
		KubernetesAPIQPS:   100,
		KubernetesAPIBurst: 200,
		IssuerOptions:      controllerpkg.IssuerOptions{ClusterResourceNamespace: *namespace},
		CertificateOptions: controllerpkg.CertificateOptions{EnableOwnerRef: true},
	})
	if err != nil {
		return err
	}
	var run []controllerpkg.Interface
	for _, name := range strings.Split(*controllers, ",") {
		construct, ok := controllerpkg.Known()[name]
		if !ok {
			known := make([]string, 0, len(controllerpkg.Known()))
			for k := range controllerpkg.Known() {
				known = append(known, k)
			}
			sort.Strings(known)
			return fmt.Errorf("no controller %q; known: %s", name, strings.Join(known, ","))
		}
		c, err := construct(factory)
		if err != nil {
			return fmt.Errorf("controller %s: %w", name, err)
		}
		run = append(run, c)
	}

	// The informers the controllers asked for start once every controller is built, as
	// cert-manager's own binary does.
	shared, err := factory.Build()
	if err != nil {
		return err
	}
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())

	var wg sync.WaitGroup
	errs := make(chan error, len(run))
	for _, c := range run {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Run(*workers, ctx); err != nil {
				errs <- err
				cancel()
			}
		}()
	}
	fmt.Fprintf(os.Stderr, "cert-manager-controller: running %d controllers\n", len(run))
	wg.Wait()
	close(errs)
	return <-errs
}
