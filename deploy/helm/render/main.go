// render: the subset of `helm template` that the kiln chart uses, for CI machines without helm.
//
// Why not helm itself: CI has no helm binary and cannot fetch one (no Go module proxy); Debian
// ships Go 1.19, sprig and sigs.k8s.io/yaml, which are the pieces helm's engine is made of. This
// program mirrors helm 3's engine for what the chart uses, and nothing more:
//   - .Values (values.yaml deep-merged with each -f file; a null in a later file deletes the key),
//     .Release (Name, Namespace, Service, IsInstall, IsUpgrade, Revision), .Chart (Chart.yaml,
//     capitalised as helm does: Name, Version, AppVersion, ...), .Template (Name, BasePath);
//   - sprig's functions plus helm's include, tpl, required, toYaml, fromYaml, toJson;
//   - missingkey=zero with "<no value>" removed, as helm renders by default; with -strict,
//     missingkey=error, as `helm lint --strict` does: a misspelt .Values key fails the render
//     instead of silently rendering nothing.
//
// .Files, .Capabilities, lookup and subcharts are not implemented: the chart must not use them
// (a template that does fails here with "function not defined" or a nil map access).
//
// Usage: render [-strict] [-f values.yaml]... [-name RELEASE] [-namespace NS] CHART_DIR
// Prints every rendered template as `# Source: CHART/templates/FILE` documents, as helm does;
// files whose names start with "_" only define templates, NOTES.txt is printed as a comment.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

// helm's recursion limit for include.
const recursionMaxNums = 1000

func readYAML(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// mergeValues is helm's coalescing of user values over chart defaults: maps merge key by key,
// anything else replaces, and a null deletes the default.
func mergeValues(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		sv, srcIsMap := v.(map[string]interface{})
		dv, dstIsMap := dst[k].(map[string]interface{})
		if srcIsMap && dstIsMap {
			dst[k] = mergeValues(dv, sv)
		} else {
			dst[k] = v
		}
	}
	return dst
}

func capitalise(m map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range m {
		if k == "" {
			continue
		}
		out[strings.ToUpper(k[:1])+k[1:]] = v
	}
	return out
}

func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func main() {
	var valueFiles multiFlag
	flag.Var(&valueFiles, "f", "values file (repeatable, later wins)")
	name := flag.String("name", "kiln", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	strict := flag.Bool("strict", false, "fail on a missing map key (helm lint --strict) instead of rendering it empty")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: render [-strict] [-f values.yaml]... [-name R] [-namespace NS] CHART_DIR")
		os.Exit(2)
	}
	missingKey := "missingkey=zero"
	if *strict {
		missingKey = "missingkey=error"
	}
	if err := run(flag.Arg(0), valueFiles, *name, *namespace, missingKey); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

func run(chartDir string, valueFiles []string, name, namespace, missingKey string) error {
	chart, err := readYAML(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	values, err := readYAML(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, f := range valueFiles {
		v, err := readYAML(f)
		if err != nil {
			return err
		}
		values = mergeValues(values, v)
	}
	chartName, _ := chart["name"].(string)
	top := map[string]interface{}{
		"Values": values,
		"Chart":  capitalise(chart),
		"Release": map[string]interface{}{
			"Name": name, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
	}

	files, err := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	if err != nil {
		return err
	}
	sort.Strings(files)
	t := template.New("gotpl").Option(missingKey)
	includedNames := map[string]int{}
	funcs := sprig.TxtFuncMap()
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["include"] = func(name string, data interface{}) (string, error) {
		if includedNames[name] > recursionMaxNums {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		includedNames[name]++
		var buf bytes.Buffer
		err := t.ExecuteTemplate(&buf, name, data)
		includedNames[name]--
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := t.Clone()
		if err != nil {
			return "", err
		}
		inner, err := clone.New("tpl").Option(missingKey).Parse(text)
		if err != nil {
			return "", fmt.Errorf("tpl: %w", err)
		}
		var buf bytes.Buffer
		if err := inner.Execute(&buf, data); err != nil {
			return "", fmt.Errorf("tpl: %w", err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	t.Funcs(funcs)

	var names []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		tname := filepath.ToSlash(filepath.Join(chartName, "templates", filepath.Base(f)))
		if _, err := t.New(tname).Parse(string(data)); err != nil {
			return err
		}
		names = append(names, tname)
	}

	var out strings.Builder
	for _, tname := range names {
		base := filepath.Base(tname)
		if strings.HasPrefix(base, "_") {
			continue
		}
		vals := map[string]interface{}{}
		for k, v := range top {
			vals[k] = v
		}
		vals["Template"] = map[string]interface{}{
			"Name": tname, "BasePath": chartName + "/templates",
		}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, tname, vals); err != nil {
			return err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if base == "NOTES.txt" {
			fmt.Fprintf(os.Stderr, "--- NOTES.txt ---\n%s\n", text)
			continue
		}
		if strings.TrimSpace(text) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", tname, strings.TrimSpace(text))
	}
	_, err = os.Stdout.WriteString(out.String())
	return err
}
