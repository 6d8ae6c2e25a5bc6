"""Portal routes for the account, the organization and invitations (included by portal_project.portal_urls)."""

from __future__ import annotations

from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.home, name="home"),
    path("profile", views.profile, name="profile"),
    path("profile/sessions/sign-out-others", views.sign_out_other_sessions, name="sign-out-others"),
    path("profile/delete", views.delete_account, name="delete-account"),
    path("organization", views.organization, name="organization"),
    path("organization/switch", views.switch_organization, name="switch-organization"),
    path("organization/invitations/<int:invitation_id>/cancel", views.invitation_cancel_view, name="invitation-cancel"),
    path("organization/members/<int:membership_id>/remove", views.member_remove, name="member-remove"),
    path("organization/members/<int:membership_id>/role", views.member_role, name="member-role"),
    path("organization/transfer", views.transfer_ownership, name="organization-transfer"),
    path("organization/leave", views.leave_organization, name="organization-leave"),
    path("invitations/<int:invitation_id>/accept", views.invitation_accept_view, name="invitation-accept"),
    path("invitations/<int:invitation_id>/decline", views.invitation_decline_view, name="invitation-decline"),
    path("invitations/<str:token>", views.invitation, name="invitation"),
]
