package api

import "crypto/tls"

// TLSConfig returns the TLS configuration that serves the API with the
// certificate whose key the evidence binds.
func (s *Server) TLSConfig() *tls.Config {
	c := s.tlsCert
	return &tls.Config{Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS13}
}
