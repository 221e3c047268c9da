// Command schemagen writes the JSON schemas kubeconform validates the rendered chart
// against (../schemas/), for exactly the kinds the chart renders.
//
// CI has no network but the package registries, so the usual schema downloads from
// kubernetes-json-schema cannot happen; instead this walks the Go API types of
// k8s.io/api and of the Prometheus Operator (pinned in go.mod) by reflection, the same
// structs the API server decodes into. Every object is strict (additionalProperties:
// false, so a misspelt or misplaced field fails), and a field is required when its json
// tag has no omitempty, which is the Kubernetes API convention for required fields.
// Types with their own JSON form (Quantity, IntOrString, Time, RawExtension, ...) get
// their wire schema. Shared definitions go to _definitions.json; each kind's file
// (kind-group-version.json, kubeconform's naming) refers to it.
//
// Regenerate with: go run . -out ../schemas   (from this directory)
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// kind is one top-level object the chart renders.
type kind struct {
	group, version, name string
	value                any
}

var kinds = []kind{
	{"", "v1", "ConfigMap", corev1.ConfigMap{}},
	{"", "v1", "Secret", corev1.Secret{}},
	{"", "v1", "Service", corev1.Service{}},
	{"", "v1", "ServiceAccount", corev1.ServiceAccount{}},
	{"", "v1", "Pod", corev1.Pod{}},
	{"apps", "v1", "Deployment", appsv1.Deployment{}},
	{"apps", "v1", "StatefulSet", appsv1.StatefulSet{}},
	{"autoscaling", "v2", "HorizontalPodAutoscaler", autoscalingv2.HorizontalPodAutoscaler{}},
	{"policy", "v1", "PodDisruptionBudget", policyv1.PodDisruptionBudget{}},
	{"networking.k8s.io", "v1", "NetworkPolicy", networkingv1.NetworkPolicy{}},
	{"monitoring.coreos.com", "v1", "ServiceMonitor", monitoringv1.ServiceMonitor{}},
}

type schema = map[string]any

// generator collects named definitions while walking types.
type generator struct {
	defs map[string]schema
}

var (
	quantityType    = reflect.TypeOf(resource.Quantity{})
	intOrStringType = reflect.TypeOf(intstr.IntOrString{})
	timeType        = reflect.TypeOf(metav1.Time{})
	microTimeType   = reflect.TypeOf(metav1.MicroTime{})
	durationType    = reflect.TypeOf(metav1.Duration{})
	rawType         = reflect.TypeOf(runtime.RawExtension{})
	fieldsV1Type    = reflect.TypeOf(metav1.FieldsV1{})
	jsonMarshaler   = reflect.TypeOf((*json.Marshaler)(nil)).Elem()
)

// special returns the wire schema of types that marshal themselves.
func special(t reflect.Type) (schema, bool) {
	switch t {
	case quantityType:
		return schema{"oneOf": []any{schema{"type": "string"}, schema{"type": "number"}}}, true
	case intOrStringType:
		return schema{"oneOf": []any{schema{"type": "string"}, schema{"type": "integer"}}}, true
	case timeType, microTimeType:
		return schema{"type": "string", "format": "date-time"}, true
	case durationType:
		return schema{"type": "string"}, true
	case rawType:
		return schema{}, true
	case fieldsV1Type:
		return schema{"type": "object"}, true
	}
	if t.Kind() == reflect.Struct && (t.Implements(jsonMarshaler) || reflect.PointerTo(t).Implements(jsonMarshaler)) {
		// Any other self-marshalling type: accept whatever it writes.
		return schema{}, true
	}
	return nil, false
}

func defName(t reflect.Type) string {
	return strings.NewReplacer("/", ".", "-", "_").Replace(t.PkgPath()) + "." + t.Name()
}

// schemaOf returns the schema of t, registering named structs as definitions.
func (g *generator) schemaOf(t reflect.Type) schema {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if s, ok := special(t); ok {
		return s
	}
	switch t.Kind() {
	case reflect.Bool:
		return schema{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return schema{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return schema{"type": "number"}
	case reflect.String:
		return schema{"type": "string"}
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return schema{"type": "string"} // []byte: base64
		}
		return schema{"type": "array", "items": g.schemaOf(t.Elem())}
	case reflect.Map:
		return schema{"type": "object", "additionalProperties": g.schemaOf(t.Elem())}
	case reflect.Interface:
		return schema{}
	case reflect.Struct:
		name := defName(t)
		if _, seen := g.defs[name]; !seen {
			g.defs[name] = nil // placeholder against recursion
			g.defs[name] = g.structSchema(t)
		}
		return schema{"$ref": "_definitions.json#/definitions/" + name}
	}
	log.Fatalf("unsupported type %s (%s)", t, t.Kind())
	return nil
}

// structSchema is the strict object schema of a struct, inline fields flattened.
func (g *generator) structSchema(t reflect.Type) schema {
	props := schema{}
	var required []string
	g.addFields(t, props, &required)
	s := schema{"type": "object", "properties": props, "additionalProperties": false}
	if len(required) > 0 {
		sort.Strings(required)
		s["required"] = required
	}
	return s
}

func (g *generator) addFields(t reflect.Type, props schema, required *[]string) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		inline := strings.Contains(opts, "inline") || (f.Anonymous && name == "")
		if inline {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			g.addFields(ft, props, required)
			continue
		}
		if name == "" {
			name = f.Name
		}
		props[name] = g.schemaOf(f.Type)
		optional := strings.Contains(opts, "omitempty") || strings.Contains(opts, "omitzero")
		if !optional && name != "apiVersion" && name != "kind" {
			*required = append(*required, name)
		}
	}
}

func main() {
	out := flag.String("out", "../schemas", "directory to write the schemas to")
	flag.Parse()
	g := &generator{defs: map[string]schema{}}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	for _, k := range kinds {
		t := reflect.TypeOf(k.value)
		props := schema{}
		var required []string
		g.addFields(t, props, &required)
		apiVersion := k.version
		if k.group != "" {
			apiVersion = k.group + "/" + k.version
		}
		props["apiVersion"] = schema{"type": "string", "enum": []string{apiVersion}}
		props["kind"] = schema{"type": "string", "enum": []string{k.name}}
		required = append(required, "apiVersion", "kind")
		sort.Strings(required)
		s := schema{
			"$schema":              "http://json-schema.org/draft-04/schema#",
			"description":          fmt.Sprintf("%s %s, generated from %s by tests/schemagen", apiVersion, k.name, defName(t)),
			"type":                 "object",
			"properties":           props,
			"required":             required,
			"additionalProperties": false,
		}
		// kubeconform's {{ .ResourceKind }}{{ .KindSuffix }}: kind, first label of the
		// group, version.
		file := strings.ToLower(k.name)
		if k.group != "" {
			file += "-" + strings.ToLower(strings.Split(k.group, ".")[0])
		}
		write(filepath.Join(*out, file+"-"+k.version+".json"), s)
	}
	write(filepath.Join(*out, "_definitions.json"), schema{"definitions": g.defs})
}

func write(path string, s schema) {
	data, err := json.MarshalIndent(s, "", " ")
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
}
