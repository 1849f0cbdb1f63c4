"""Admin for users: roles, entity access, second factor and sign-in lockout; replaces Django's User admin.
Roles (groups among config.roles.ROLES, with the staff and superuser flags that follow) and entity access are
form fields saved by the audited `auth_services.user_roles_set` and `ledger.services.entity_access_set`;
names, e-mail and the active flag by `auth_services.user_profile_update`. Audited actions reset a lost
authenticator and lift a django-axes lockout. django-otp's device admin (secrets, QR codes) is replaced by a
read-only list: no admin may read, or plant, someone else's second factor."""
from django import forms
from django.contrib import admin, messages
from django.contrib.auth import forms as auth_forms
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.password_validation import validate_password
from django.db import transaction
from django.db.models import Exists, OuterRef, Prefetch
from django.http import HttpResponseRedirect
from django_otp.plugins.otp_totp.models import TOTPDevice

from config.admin_mixins import FastCountPaginator, ReadOnlyAdminMixin
from config.errors import TieoutError
from config.roles import ROLES
from ledger import selectors as ledger_selectors
from ledger import services as ledger
from portal import auth_services

User = get_user_model()


class UserChangeForm(auth_forms.UserChangeForm):
    roles = forms.MultipleChoiceField(choices=[(r, r) for r in ROLES], required=False,
                                      widget=forms.CheckboxSelectMultiple,
                                      help_text="admin implies every permission; integration is for source "
                                                "systems (API tokens), not people.")
    all_entities = forms.BooleanField(required=False, label="All entities",
                                      help_text="Every entity, present and future (admins always see all).")
    entities = forms.ModelMultipleChoiceField(queryset=ledger_selectors.entities(), required=False,
                                              widget=forms.CheckboxSelectMultiple, to_field_name="code",
                                              help_text="Used when “All entities” is off.")

    class Meta(auth_forms.UserChangeForm.Meta):
        fields = ["username", "password", "first_name", "last_name", "email", "is_active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        user = self.instance
        if user.pk:
            self.fields["roles"].initial = sorted(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
            access = ledger_selectors.entity_access_of(user)
            self.fields["all_entities"].initial = bool(access and access.all_entities)
            self.fields["entities"].initial = list(access.entities.all()) if access else []


class UserAddForm(forms.ModelForm):
    password1 = forms.CharField(label="Password", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
                                required=False, help_text="Leave empty for no password (the user cannot sign in "
                                                          "until one is set).")

    class Meta:
        model = User
        fields = ["username"]

    def clean_password1(self):
        password = self.cleaned_data.get("password1")
        if password:
            validate_password(password, User(username=self.cleaned_data.get("username", "")))
        return password


def _refuse(request, exc: TieoutError):
    messages.error(request, exc.detail)


class TieoutUserAdmin(UserAdmin):
    form = UserChangeForm
    add_form = UserAddForm
    list_display = ["username", "roles_display", "entities_display", "two_factor", "is_active", "last_login"]
    list_filter = ["is_active", "groups"]
    search_fields = ["username", "first_name", "last_name", "email"]
    ordering = ["username"]
    show_full_result_count = False  # no COUNT(*) on every list page
    show_facets = admin.ShowFacets.NEVER
    paginator = FastCountPaginator
    readonly_fields = ["last_login", "date_joined", "two_factor"]
    fieldsets = [
        (None, {"fields": ["username", "password"]}),
        ("Person", {"fields": ["first_name", "last_name", "email"]}),
        ("Roles", {"fields": ["roles", "is_active"]}),
        ("Entity access", {"fields": ["all_entities", "entities"]}),
        ("Sign-in", {"fields": ["two_factor", "last_login", "date_joined"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["username", "password1"]})]
    filter_horizontal = []
    actions = ["reset_two_factor", "unlock_sign_in"]

    def get_queryset(self, request):
        confirmed = TOTPDevice.objects.filter(user=OuterRef("pk"), confirmed=True)
        return (super().get_queryset(request)
                .select_related("entity_access")
                .prefetch_related(Prefetch("groups"), "entity_access__entities")
                .annotate(has_2fa=Exists(confirmed)))

    @admin.display(description="roles")
    def roles_display(self, obj):
        held = sorted(g.name for g in obj.groups.all() if g.name in ROLES)
        if obj.is_superuser and "admin" not in held:
            held.append("admin (superuser)")
        return ", ".join(held) or "—"

    @admin.display(description="entities")
    def entities_display(self, obj):
        if obj.is_superuser:
            return "all (admin)"
        access = getattr(obj, "entity_access", None)
        if access is None:
            return "none"
        if access.all_entities:
            return "all"
        return ", ".join(sorted(e.code for e in access.entities.all())) or "none"

    @admin.display(description="2FA", boolean=True)
    def two_factor(self, obj):
        has = getattr(obj, "has_2fa", None)
        return auth_services.user_2fa_enrolled(obj) if has is None else has

    # Saving: the services do the writing (and the auditing); the admin only translates the form.
    def save_model(self, request, obj, form, change):
        if not change:
            created = auth_services.user_create(username=form.cleaned_data["username"],
                                                password=form.cleaned_data.get("password1") or None,
                                                actor=request.user)
            obj.pk = created.pk
            obj._state.adding = False
            obj.refresh_from_db()
            return
        values = {name: form.cleaned_data[name] for name in auth_services.PROFILE_FIELDS if name in form.cleaned_data}
        auth_services.user_profile_update(user=obj, values=values, actor=request.user)

    def save_related(self, request, form, formsets, change):
        user = form.instance
        if "roles" in form.cleaned_data:
            auth_services.user_roles_set(user=user, roles=form.cleaned_data["roles"], actor=request.user)
        if "all_entities" in form.cleaned_data:
            codes = None if form.cleaned_data["all_entities"] else [e.code for e in form.cleaned_data["entities"]]
            ledger.entity_access_set(user=user, entity_codes=codes, actor=request.user)
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except TieoutError as exc:  # the service refused (e.g. removing your own admin role): nothing saved
            _refuse(request, exc)
            return HttpResponseRedirect(request.get_full_path())

    def user_change_password(self, request, id, form_url=""):
        # Django's password form sets the password; the audit entry is written in the same transaction.
        with transaction.atomic():
            response = super().user_change_password(request, id, form_url)
            if request.method == "POST" and response.status_code == 302:
                auth_services.user_password_set_record(user=User.objects.get(pk=id), actor=request.user)
        return response

    def has_delete_permission(self, request, obj=None):
        return False  # audit entries name users: deactivate instead

    @admin.action(description="Reset two-factor device (lost authenticator)", permissions=["change"])
    def reset_two_factor(self, request, queryset):
        for user in queryset:
            auth_services.user_2fa_reset(user=user, actor=request.user)
        self.message_user(request, f"Two-factor devices reset for {queryset.count()} user(s); they enrol a new "
                                   "one at their next sign-in.", messages.SUCCESS)

    @admin.action(description="Unlock sign-in (clear failed attempts)", permissions=["change"])
    def unlock_sign_in(self, request, queryset):
        cleared = sum(auth_services.user_sign_in_unlock(user=user, actor=request.user) for user in queryset)
        self.message_user(request, f"Sign-in unlocked for {queryset.count()} user(s) ({cleared} lockout "
                                   "record(s) cleared).", messages.SUCCESS)


admin.site.unregister(User)
admin.site.register(User, TieoutUserAdmin)


class TOTPDeviceReadOnlyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Who has an authenticator, and when it was last used; never the secret. Reset from the user list."""

    list_display = ["user", "name", "confirmed", "created_at", "last_used_at", "throttling_failure_count"]
    list_filter = ["confirmed"]
    list_select_related = ["user"]
    paginator = FastCountPaginator
    search_fields = ["user__username"]
    fields = ["user", "name", "confirmed", "created_at", "last_used_at", "throttling_failure_count"]


if admin.site.is_registered(TOTPDevice):
    admin.site.unregister(TOTPDevice)
admin.site.register(TOTPDevice, TOTPDeviceReadOnlyAdmin)
